"""Dry-run runbooks: a golden plan for a fixed world, and the plan equals the real run."""
import os
import re
import subprocess
from pathlib import Path

import pytest

import botlxc
from conftest import facts, make_spec, register_ready
from test_up import register_new_tenant

GOLDEN = Path(__file__).parent / "golden" / "up-new-tenant.sh"
REGENERATE = "BOTLXC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -m 'not live' tests/test_plan.py"


def new_tenant(tmp_path, ca_file):
    # LXD's usual idmap base, whoever runs the tests: the golden file is the same everywhere
    return make_spec(tmp_path, host=facts(ca_files=(ca_file,), subuid_base=1000000))


def plan_new_tenant(calls, tmp_path, ca_file):
    """`up --dry-run` for tenant acme in world 'ready' (image present, tenant absent)."""
    spec = new_tenant(tmp_path, ca_file)
    register_ready(calls)
    runner = botlxc.Runner(dry_run=True)
    ports, failures = botlxc.up(runner, spec)
    assert failures == {}
    assert calls.made() == calls.expected  # reads only, the same as a real run makes first
    return runner


def test_plan_of_a_new_tenant_matches_the_golden_runbook(calls, tmp_path, ca_file):
    text = plan_new_tenant(calls, tmp_path, ca_file).script().replace(str(tmp_path), "/TMP")
    if os.environ.get("BOTLXC_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
        pytest.skip("rewrote %s: review it with git diff" % GOLDEN)
    if not GOLDEN.is_file():
        pytest.fail("golden runbook %s is missing; write it with: %s" % (GOLDEN, REGENERATE),
                    pytrace=False)
    assert text == GOLDEN.read_text(), "the plan changed; if that is intended: " + REGENERATE


def test_plan_is_a_runnable_shell_script_and_writes_nothing(calls, tmp_path, ca_file, fp):
    script = plan_new_tenant(calls, tmp_path, ca_file).script()
    assert not (tmp_path / "stack").exists()  # a dry run creates no dirs and no secrets
    path = tmp_path / "plan.sh"
    path.write_text(script)
    fp.pass_command(["bash", "-n", str(path)])
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "\nset -eu\n" in script


def test_plan_is_what_a_real_run_does(calls, tmp_path, ca_file):
    """One code path: the dry run records exactly the changes the real run makes."""
    planned = plan_new_tenant(calls, tmp_path, ca_file).actions
    spec = new_tenant(tmp_path, ca_file)
    register_new_tenant(calls, spec, ca_file)
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert calls.made() == calls.expected
    assert [(a.argv, a.why, a.input) for a in planned] == \
        [(a.argv, a.why, a.input) for a in runner.actions]


def test_the_runbooks_secrets_step_writes_the_same_env(calls, tmp_path, ca_file, capsys):
    """The runbook shows `botlxc secrets ...` for the in-process step; running it writes
    the secrets and a .env that points at the planned ports."""
    runner = plan_new_tenant(calls, tmp_path, ca_file)
    (step,) = [a.argv for a in runner.actions if a.in_process]
    assert step[0] == "botlxc"
    capsys.readouterr()
    assert botlxc.main(step[1:]) == 0
    stack = tmp_path / "stack"
    assert oct((stack / ".env").stat().st_mode & 0o777) == "0o600"
    env = (stack / ".env").read_text()
    assert re.fullmatch(
        r"# BotServer settings for tenant acme, written by botlxc \(keep private\)\n"
        r"DATABASE_URL=postgres://gbuser:[A-Za-z0-9]{32}@127\.0\.0\.1:5432/botserver\n"
        r"DRIVE_SERVER=http://127\.0\.0\.1:9000\n"
        r"DRIVE_ACCESSKEY=[A-Za-z0-9]{20}\n"
        r"DRIVE_SECRET=[A-Za-z0-9]{32}\n"
        r"CACHE_URL=redis://gbuser:[A-Za-z0-9]{32}@127\.0\.0\.1:6379\n", env)
    out, err = capsys.readouterr()
    assert out == "" and err == "secrets: written\n"
    for value in re.findall(r"[A-Za-z0-9]{20,}", env):
        assert value not in out + err
