"""The single-file build: dist/botlxc.pyz runs with a bare python3 and finds its templates."""
import runpy
import shutil
import subprocess
import sys
import zipfile
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
    with zipfile.ZipFile(pyz) as archive:  # every template, a new component's folder too
        bundled = {name for name in archive.namelist() if name.startswith("templates/")
                   and not name.endswith("/")}
    assert bundled == set(template_files())
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
            "component='cache', engine='', ports={'valkey': 6379}, root='/opt/gbo', "
            "etc='/etc/botlxc'))"]
    fp.pass_command(argv)
    proc = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "port 6379" in proc.stdout


def template_files():
    """Every file under templates/, as a path relative to the checkout."""
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "templates").rglob("*")
                  if path.is_file() and not path.name.startswith(".")
                  and "__pycache__" not in path.parts)


def test_the_wheel_ships_every_template_where_botlxc_looks():
    """setup.py computes data_files from the tree: a new component's folder ships with no
    line of packaging, under <prefix>/share/botlxc/templates/<its path>."""
    data_files = runpy.run_path(str(ROOT / "setup.py"), run_name="setup")["template_data_files"]()
    shipped = {source: dest for dest, sources in data_files for source in sources}
    assert sorted(shipped) == template_files()
    for source, dest in shipped.items():
        assert dest == str(Path("share/botlxc") / Path(source).parent), source
    assert "data_files" not in (ROOT / "setup.cfg").read_text()  # one list, not two
