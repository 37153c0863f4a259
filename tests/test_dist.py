"""The single-file build: dist/botlxc.pyz runs with a bare python3 and finds its templates."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_zipapp_plans_a_tenant_with_its_bundled_templates(fp, tmp_path):
    work = tmp_path / "src"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(
        ".venv", ".git", "dist", "build", "botserver-stack*", "__pycache__", ".pytest_cache"))
    build = ["sh", "scripts/dist.sh", sys.executable]
    fp.pass_command(build)
    subprocess.run(build, cwd=work, check=True, capture_output=True)
    pyz = work / "dist" / "botlxc.pyz"
    # A folder without botlxc.py or templates next to it: only the .pyz can provide them.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(pyz), elsewhere / "botlxc.pyz")
    shutil.rmtree(work)
    for argv, expected in (([sys.executable, "-I", "-S", "botlxc.pyz", "--version"], "0."),
                           ([sys.executable, "-I", "-S", "botlxc.pyz", "up", "--tenant", "Bad"],
                            "invalid tenant name")):
        fp.pass_command(argv)
        proc = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True)
        assert expected in proc.stdout + proc.stderr, proc.stderr
    # templates load from inside the zip (StrictUndefined render of a real component file)
    argv = [sys.executable, "-I", "-S", "-c",
            "import sys; sys.path.insert(0, 'botlxc.pyz'); import botlxc; "
            "print(botlxc.render('components/cache/valkey.conf.j2', tenant='t', "
            "component='cache', engine='', ports={'valkey': 6379}, pip_index_url=''))"]
    fp.pass_command(argv)
    proc = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "port 6379" in proc.stdout
