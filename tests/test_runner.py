"""The seam's own contract: Runner.read / change / local / script."""
import subprocess
import sys
from pathlib import Path

import pytest

import botlxc


def test_read_returns_the_process_and_runs_in_dry_run_too(fp):
    fp.register(["lxc", "query", "/1.0"], stdout='{"api_version": "1.0"}')
    proc = botlxc.Runner(dry_run=True).read(["lxc", "query", "/1.0"])
    assert proc.stdout == '{"api_version": "1.0"}'
    assert list(fp.calls) == [["lxc", "query", "/1.0"]]


def test_change_failure_raises_command_failed_with_argv_rc_and_stderr_tail(fp):
    stderr = "line 1\nline 2\nline 3\nError: Failed instance creation: no space left\n"
    fp.register(["lxc", "init", "images:debian/12", "acme-tables"], stderr=stderr,
                returncode=1)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.CommandFailed) as failed:
        runner.change(["lxc", "init", "images:debian/12", "acme-tables"], "create",
                      step="acme-tables: create")
    exc = failed.value
    assert exc.argv == ["lxc", "init", "images:debian/12", "acme-tables"]
    assert exc.rc == 1
    assert exc.exit_code == 3
    assert exc.stderr == stderr
    # one line: the step, the exit code, the command as a shell line, the last 3 stderr lines
    assert str(exc) == ("acme-tables: create: command failed (exit 1): lxc init images:debian/12 "
                        "acme-tables -- line 2 | line 3 | Error: Failed instance creation: "
                        "no space left")
    # recorded before it ran: the audit log shows what was attempted
    assert [a.argv for a in runner.actions] == [["lxc", "init", "images:debian/12",
                                                 "acme-tables"]]


def test_read_failure_raises_unless_unchecked(fp):
    fp.register(["lxc", "query", "/1.0"], stderr="Error: not found\n", returncode=1)
    fp.register(["lxc", "query", "/1.0"], stderr="Error: not found\n", returncode=1)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.CommandFailed) as failed:
        runner.read(["lxc", "query", "/1.0"], step="query LXD")
    assert (failed.value.argv, failed.value.rc) == (["lxc", "query", "/1.0"], 1)
    assert "query LXD: command failed (exit 1): lxc query /1.0 -- Error: not found" \
        == str(failed.value)
    assert runner.read(["lxc", "query", "/1.0"], check=False).returncode == 1
    assert runner.actions == []


def test_shell_metacharacters_are_quoted_in_the_message(fp):
    fp.register(["touch", "a b;c"], returncode=2)
    with pytest.raises(botlxc.CommandFailed) as failed:
        botlxc.Runner().change(["touch", "a b;c"], "why")
    assert str(failed.value) == "command failed (exit 2): touch 'a b;c'"


def test_missing_program_is_exit_127_not_a_traceback(fp, tmp_path):
    missing = str(tmp_path / "no-such-program")
    fp.pass_command([missing])  # a real exec of a path that does not exist
    with pytest.raises(botlxc.CommandFailed) as failed:
        botlxc.Runner().read([missing], step="probe")
    assert failed.value.rc == 127
    assert str(failed.value) == "probe: command failed (exit 127): %s -- %s: command not " \
        "found" % (missing, missing)


def test_change_accepts_its_ok_codes(fp):
    fp.register(["lxc", "exec", "c", "--", "systemctl", "is-system-running", "--wait"],
                stdout="degraded\n", returncode=1)
    proc = botlxc.Runner().change(
        ["lxc", "exec", "c", "--", "systemctl", "is-system-running", "--wait"], "boot",
        ok_codes=(0, 1))
    assert proc.returncode == 1


def test_change_passes_input_on_stdin(fp):
    seen = []
    fp.register(["lxd", "init", "--preseed"], stdin_callable=seen.append)
    botlxc.Runner().change(["lxd", "init", "--preseed"], "init", input="config: {}\n")
    assert seen == ["config: {}\n"]


def test_dry_run_records_and_executes_nothing(fp):
    # nothing is registered: any process started here would fail the test
    runner = botlxc.Runner(dry_run=True)
    assert runner.change(["lxc", "delete", "acme-tables", "--force"], "delete") is None
    done = []
    runner.local(["botlxc", "secrets"], "write secrets", lambda: done.append(1))
    assert list(fp.calls) == []
    assert done == []
    assert [(a.argv, a.why, a.in_process) for a in runner.actions] == [
        (["lxc", "delete", "acme-tables", "--force"], "delete", False),
        (["botlxc", "secrets"], "write secrets", True)]


def test_local_runs_in_process_and_starts_no_command(fp):
    done = []
    runner = botlxc.Runner()
    runner.local(["botlxc", "secrets"], "write secrets", lambda: done.append(1))
    assert done == [1]
    assert list(fp.calls) == []


def sample_runner():
    runner = botlxc.Runner(dry_run=True)
    runner.change(["lxc", "init", "images:debian/12", "acme-tables", "-c",
                   "user.botlxc.stack=/srv/my stack"], "create instance acme-tables")
    runner.change(["lxd", "init", "--preseed"], "initialise LXD", input="config: {}\n")
    runner.change(["tee", "/tmp/x"], "content without a final newline", input="a 'b' $HOME")
    runner.change(["tee", "/tmp/y"], "content that holds the heredoc delimiter",
                  input="x\nBOTLXC_EOF\ny\n")
    runner.change(["lxc", "exec", "acme-tables", "--", "systemctl", "is-system-running",
                   "--wait"], "wait for boot", ok_codes=(0, 1))
    runner.local(["botlxc", "secrets", "--tenant", "acme"], "generate missing secrets",
                 lambda: None)
    return runner


def test_script_is_a_literal_runbook():
    assert sample_runner().script() == """\
#!/usr/bin/env bash
# botlxc %s runbook: the changes botlxc would make, in order.
set -eu

# create instance acme-tables
lxc init images:debian/12 acme-tables -c 'user.botlxc.stack=/srv/my stack'

# initialise LXD
lxd init --preseed <<'BOTLXC_EOF'
config: {}
BOTLXC_EOF

# content without a final newline
printf '%%s' 'a '"'"'b'"'"' $HOME' | tee /tmp/x

# content that holds the heredoc delimiter
printf '%%s' 'x
BOTLXC_EOF
y
' | tee /tmp/y

# wait for boot
lxc exec acme-tables -- systemctl is-system-running --wait || true

# generate missing secrets
botlxc secrets --tenant acme
""" % botlxc.VERSION


def test_script_passes_bash_n(fp, tmp_path):
    path = tmp_path / "runbook.sh"
    path.write_text(sample_runner().script())
    fp.pass_command(["bash", "-n", str(path)])
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_script_delivers_stdin_byte_for_byte(fp, tmp_path):
    """Run a runbook for real (only `bash` is let through; its children are `tee`s)."""
    contents = {"heredoc": "line $HOME `x` 'q' \\n\n", "no-newline": "a 'b' \"c\" $PATH",
                "delimiter": "x\nBOTLXC_EOF\ny\n", "empty-lines": "\n\nz\n"}
    runner = botlxc.Runner(dry_run=True)
    for name, text in contents.items():
        runner.change(["tee", str(tmp_path / name)], name, input=text)
    path = tmp_path / "runbook.sh"
    path.write_text(runner.script())
    fp.pass_command(["bash", str(path)])
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {name: (tmp_path / name).read_text() for name in contents} == contents


def test_after_ctrl_c_no_new_command_starts(fp):
    """The first SIGINT lets the running command finish; the next one is never started."""
    fp.register(["lxc", "start", "acme-tables"])
    runner = botlxc.Runner()
    runner.change(["lxc", "start", "acme-tables"], "start")
    botlxc.INTERRUPTED.set()
    try:
        with pytest.raises(botlxc.Interrupted) as stopped:
            runner.change(["lxc", "start", "acme-cache"], "start")
        assert stopped.value.exit_code == 130
        assert "interrupted before: lxc start acme-cache" in str(stopped.value)
        with pytest.raises(botlxc.Interrupted):
            runner.read(["lxc", "list", "--format", "json"])
    finally:
        botlxc.INTERRUPTED.clear()
    assert list(fp.calls) == [["lxc", "start", "acme-tables"]]


def test_the_sigint_handler_sets_the_flag_first_and_stops_at_once_the_second_time(capsys, fp):
    botlxc.INTERRUPTED.clear()
    try:
        botlxc.on_interrupt(2, None)
        assert botlxc.INTERRUPTED.is_set()
        assert "stopping after the running step" in capsys.readouterr().err
    finally:
        botlxc.INTERRUPTED.clear()
    # The second one ends the process at once (no waiting for threads): seen from outside.
    second = [sys.executable, "-c", "import botlxc; botlxc.INTERRUPTED.set(); "
              "botlxc.on_interrupt(2, None); print('still here')"]
    fp.pass_command(second)
    proc = subprocess.run(second, capture_output=True, text=True,
                          cwd=str(Path(botlxc.__file__).parent))
    assert proc.returncode == 130 and "still here" not in proc.stdout
    assert "stopped; what runs inside a container finishes there" in proc.stderr


def test_commands_run_in_their_own_session(fp):
    """The terminal's Ctrl-C must not reach `lxc exec` (it would forward it to apt)."""
    seen = {}
    fp.register(["true"], callback=lambda process: seen.update(process.kwargs or {}))
    botlxc.Runner().read(["true"])
    assert seen.get("start_new_session") is True
