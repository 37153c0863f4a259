"""Day-2 commands at the seam: literal argv (dry runs print the runbook a real run does),
bad input refused with exit 2 before any command, and the operations' decisions."""
import json

import pytest

import botlxc
from conftest import (LIST, OWNER, SS, facts, health_reads, make_spec, master_text,
                      register_ready, tenant_instance, up_world)
from test_up import INSTALL, PROTECTED  # noqa: F401  (the shapes every test here shares)

V = botlxc.VERSION


def run(capsys, *argv):
    code = botlxc.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def runbook_argv(out):
    """The commands of a runbook, one argv per command line."""
    return [botlxc.shlex.split(line.replace(" || true", "")) for line in out.splitlines()
            if line and not line.startswith(("#", "set -eu"))]


@pytest.fixture
def acme(tmp_path):
    """Tenant acme up: its host side on disk and its instances as LXD lists them."""
    spec = make_spec(tmp_path)
    return spec, up_world(spec)


def op_for(calls, world, dry_run=False):
    calls(LIST, data=world)
    return botlxc.Op("acme", botlxc.Runner(dry_run), facts())


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, message", [
    (["limits", "cache", "--memory", "-1GB"],
     "invalid --memory '-1GB': give a size such as 512MB or 2GiB"),
    (["limits", "cache", "--memory", "0MB"], "invalid --memory '0MB'"),
    (["limits", "cache", "--cpu", "0"], "invalid --cpu '0'"),
    (["limits", "cache", "--disk", "lots"], "invalid --disk 'lots'"),
    (["limits", "mail", "--cpu", "1"], "unknown component 'mail'"),
    (["snapshot", "create", "a/b"], "invalid snapshot name 'a/b'"),
    (["snapshot", "create", "two words"], "invalid snapshot name 'two words'"),
    (["snapshot", "restore", "../x"], "invalid snapshot name '../x'"),
    (["ports", "set", "cache=0"], "invalid port 'cache=0': port 0 is out of range 1-65535"),
    (["ports", "set", "cache=65536"], "port 65536 is out of range 1-65535"),
    (["ports", "set", "cache=http"], "expected COMPONENT[.NAME]=HOSTPORT"),
    (["exec", "mail", "--", "true"], "unknown component 'mail'"),
    (["logs", "tables", "-t", "Bad_Name"], "invalid tenant name 'Bad_Name'"),
    (["clone", "--to", "x--y"], "invalid tenant name 'x--y'"),
    (["snapshot", "schedule", "--every", "daily"], "--every needs --keep N"),
    (["snapshot", "schedule"], "give --every hourly|daily|weekly with --keep N, or --off"),
])
def test_bad_input_is_one_line_exit_2_and_runs_nothing(capsys, fp, argv, message):
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("botlxc: error: ") and message in err and err.count("\n") == 1
    assert list(fp.calls) == []


# ----------------------------------------------------------------------------- exec, logs


def test_exec_runs_in_the_container_and_passes_the_exit_code_on(capsys, calls, acme):
    spec, world = acme
    calls(LIST, data=world)
    calls(["lxc", "exec", "acme-tables", "-T", "--", "psql", "-U", "gbuser", "botserver",
           "-c", "select 1"], returncode=7)
    code, out, err = run(capsys, "exec", "tables", "-t", "acme", "--", "psql", "-U", "gbuser",
                         "botserver", "-c", "select 1")
    assert code == 7 and calls.made() == calls.expected


def test_exec_in_a_component_the_tenant_lacks_is_bad_input(capsys, calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    calls(LIST, data=up_world(spec))
    code, out, err = run(capsys, "exec", "cache", "-t", "acme", "--", "true")
    assert code == 2
    assert err == ("botlxc: error: tenant acme has no cache container (botlxc up --tenant "
                   "acme -c cache)\n")


def test_logs_show_the_journal_then_the_files(capsys, calls, acme):
    spec, world = acme
    calls(LIST, data=world)
    calls(["lxc", "exec", "acme-cache", "-T", "--", *botlxc.LOGS, "sh", "cache", "20", ""])
    calls(LIST, data=world)
    calls(["lxc", "exec", "acme-cache", "-T", "--", *botlxc.LOGS, "sh", "cache", "50",
           "follow"])
    assert run(capsys, "logs", "cache", "-t", "acme", "-n", "20")[0] == 0
    assert run(capsys, "logs", "cache", "-t", "acme", "-f")[0] == 0
    assert calls.made() == calls.expected


# ----------------------------------------------------------------------------- start, stop


def test_stop_stops_the_service_first_then_the_container(capsys, calls, acme):
    spec, world = acme
    calls(LIST, data=world)
    code, out, err = run(capsys, "stop", "-t", "acme", "-c", "tables", "--dry-run")
    assert code == 0
    assert runbook_argv(out) == [
        ["lxc", "exec", "acme-tables", "--", "systemctl", "stop", "tables.service"],
        ["lxc", "stop", "acme-tables", "--timeout", "120"]]


def test_start_waits_for_boot_network_and_health(capsys, calls, acme):
    spec, world = acme
    for inst in world:
        inst["status"] = "Stopped"
    calls(LIST, data=world)
    code, out, err = run(capsys, "start", "-t", "acme", "-c", "cache", "--dry-run")
    assert code == 0
    assert runbook_argv(out) == [
        ["lxc", "start", "acme-cache"],
        ["lxc", "exec", "acme-cache", "--", *botlxc.BOOT_WAIT],
        ["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT],
        ["lxc", "exec", "acme-cache", "--", *botlxc.HEALTH_WAIT]]


# ----------------------------------------------------------------------------- destroy


NETWORKS = ["lxc", "query", "/1.0/networks?recursion=1"]
ACLS = ["lxc", "query", "/1.0/network-acls?recursion=1"]


def test_destroy_keeps_the_data_unless_purged(capsys, calls, acme, tmp_path):
    spec, world = acme
    calls(LIST, data=world)
    calls(NETWORKS, data=[])
    calls(ACLS, data=[])
    code, out, err = run(capsys, "destroy", "-t", "acme", "--dry-run")
    assert code == 0
    commands = runbook_argv(out)
    for component in ("tables", "drive", "cache"):
        name = "acme-" + component
        at = commands.index(["lxc", "stop", name, "--timeout", "120"])
        assert commands[at + 1:at + 3] == [
            ["lxc", "config", "unset", name, "security.protection.delete"],
            ["lxc", "delete", name]]
    assert not any(argv[:2] == ["rm", "-rf"] for argv in commands)


def test_purge_without_yes_and_no_terminal_is_refused(capsys, calls, acme, tmp_path):
    spec, world = acme
    code, out, err = run(capsys, "destroy", "-t", "acme", "--purge-data")
    assert code == 2 and "confirm with --yes" in err
    assert calls.made() == []
    assert (tmp_path / "stack/tables/data").is_dir()


def test_purge_deletes_the_stack_last(calls, acme, tmp_path):
    spec, world = acme
    op = op_for(calls, world, dry_run=True)
    calls(NETWORKS, data=[])
    calls(ACLS, data=[])
    botlxc.destroy(op, purge=True)
    assert op.runner.actions[-1].argv == ["rm", "-rf", "--one-file-system",
                                          str(tmp_path / "stack")]


# ----------------------------------------------------------------------------- limits


def test_limits_are_set_live_and_kept_for_later_containers(calls, acme, tmp_path):
    spec, world = acme
    op = op_for(calls, world)
    calls(["lxc", "config", "set", "acme-cache", "limits.cpu", "1"])
    calls(["lxc", "config", "set", "acme-cache", "limits.memory", "512MB"])
    calls(["lxc", "config", "device", "override", "acme-cache", "root", "size=4GiB"])
    calls(["install", "-m", "0600", "/dev/stdin", str(tmp_path / "stack/.botlxc/limits.json")])
    botlxc.set_limits(op, "cache", "1", "512MB", "4GiB")
    assert calls.made() == calls.expected
    kept = json.loads(op.runner.actions[-1].input)
    assert kept == {"cache": {"disk": "4GiB", "limits.cpu": "1", "limits.memory": "512MB"}}


def test_up_gives_a_new_container_the_kept_limits(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False)
    state = tmp_path / "stack/.botlxc"
    state.mkdir(parents=True, mode=0o700)
    (state / "limits.json").write_text(json.dumps(
        {"cache": {"limits.memory": "256MB", "disk": "2GiB"}}))
    register_ready(calls)
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    (init,) = [a.argv for a in runner.actions if a.argv[:2] == ["lxc", "init"]]
    assert init[-10:] == ["-c", "limits.memory=256MB", "-c", "security.protection.delete=true",
                          "-c", "security.idmap.isolated=true",
                          "-c", "security.idmap.base=%d" % (OWNER + 65536),
                          "-d", "root,size=2GiB"]


def test_a_limits_file_that_is_not_json_is_a_clear_error(tmp_path):
    (tmp_path / ".botlxc").mkdir()
    (tmp_path / ".botlxc/limits.json").write_text("{broken")
    with pytest.raises(botlxc.BotlxcError, match="limits.json is not JSON"):
        botlxc.read_limits(tmp_path)


# ----------------------------------------------------------------------------- snapshots


def test_a_snapshot_freezes_all_then_copies_the_data_then_resumes(capsys, calls, acme,
                                                                  tmp_path):
    spec, world = acme
    calls(LIST, data=world)
    code, out, err = run(capsys, "snapshot", "create", "s1", "-t", "acme", "--dry-run")
    assert code == 0
    S, snaps = str(tmp_path / "stack"), str(tmp_path / "stack/.botlxc/snapshots")
    names = ["acme-tables", "acme-drive", "acme-cache"]
    assert runbook_argv(out) == (
        [["lxc", "pause", n] for n in names]
        + [["lxc", "snapshot", n, "s1"] for n in names]
        + [["install", "-d", "-m", "0700", snaps, snaps + "/s1", snaps + "/s1/tables",
            snaps + "/s1/drive", snaps + "/s1/cache"]]
        + [["cp", "-a", "--reflink=auto", "%s/%s/data" % (S, c), "%s/%s/conf" % (S, c),
            "%s/%s/logs" % (S, c), "%s/s1/%s" % (snaps, c)] for c in ("tables", "drive",
                                                                      "cache")]
        + [["lxc", "start", n] for n in names])


def test_a_failed_copy_removes_the_half_snapshot_and_resumes(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)
    op = op_for(calls, world)
    S = str(tmp_path / "stack")
    calls(["lxc", "pause", "acme-cache"])
    calls(["lxc", "snapshot", "acme-cache", "s1"])
    calls(["install", "-d", "-m", "0700", S + "/.botlxc/snapshots",
           S + "/.botlxc/snapshots/s1", S + "/.botlxc/snapshots/s1/cache"])
    calls(["cp", "-a", "--reflink=auto", S + "/cache/data", S + "/cache/conf", S + "/cache/logs",
           S + "/.botlxc/snapshots/s1/cache"], returncode=1, stderr="cp: No space left\n")
    calls(["lxc", "delete", "acme-cache/s1"])
    calls(["rm", "-rf", "--one-file-system", S + "/.botlxc/snapshots/s1"])
    calls(["lxc", "start", "acme-cache"])
    with pytest.raises(botlxc.CommandFailed, match="No space left"):
        botlxc.create_snapshot(op, "s1", ())
    assert calls.made() == calls.expected


def test_an_existing_snapshot_name_is_refused(calls, acme):
    spec, world = acme
    world[0]["snapshots"] = [{"name": "s1", "created_at": "2026-11-27T10:00:00Z"}]
    op = op_for(calls, world)
    with pytest.raises(botlxc.BadInput, match="snapshot s1 exists already"):
        botlxc.create_snapshot(op, "s1", ())
    assert op.runner.actions == []


def with_snapshot(world, stack, name, components=("tables", "drive", "cache")):
    for inst in world:
        inst["snapshots"] = [{"name": name, "created_at": "2026-11-27T10:00:00Z"}]
    for component in components:
        (stack / ".botlxc/snapshots" / name / component).mkdir(parents=True)


def test_restore_stops_restores_both_parts_keeps_the_old_data_and_waits(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    world = up_world(spec)
    with_snapshot(world, tmp_path / "stack", "s1", ("tables",))
    op = op_for(calls, world, dry_run=True)
    S = str(tmp_path / "stack")
    aside = botlxc.restore_snapshot(op.runner, botlxc.tenant_stack(op), botlxc.chosen(op),
                                    "s1")
    assert aside.name.startswith("before-restore-")
    staging = S + "/tables/.restoring"
    assert [a.argv for a in op.runner.actions] == [
        ["lxc", "exec", "acme-tables", "--", "systemctl", "stop", "tables.service"],
        ["lxc", "stop", "acme-tables", "--timeout", "120"],
        # the copy first, beside the live data: a failure here changes nothing live
        ["rm", "-rf", "--one-file-system", staging],
        ["install", "-d", "-m", "0700", staging],
        ["cp", "-a", "--reflink=auto", S + "/.botlxc/snapshots/s1/tables/data",
         S + "/.botlxc/snapshots/s1/tables/conf", S + "/.botlxc/snapshots/s1/tables/logs",
         staging],
        ["install", "-d", "-m", "0700", str(aside), str(aside / "tables")],
        ["lxc", "restore", "acme-tables", "s1"],
        ["mv", S + "/tables/data", S + "/tables/conf", S + "/tables/logs", str(aside / "tables")],
        ["mv", staging + "/data", staging + "/conf", staging + "/logs", S + "/tables"],
        ["rmdir", staging],
        ["lxc", "start", "acme-tables"],
        ["lxc", "exec", "acme-tables", "--", *botlxc.BOOT_WAIT],
        ["lxc", "exec", "acme-tables", "--", *botlxc.NETWORK_WAIT],
        ["lxc", "exec", "acme-tables", "--", *botlxc.HEALTH_WAIT]]


def test_restore_of_a_snapshot_without_its_data_copy_is_refused(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    world = up_world(spec)
    world[0]["snapshots"] = [{"name": "s1", "created_at": "x"}]  # an `lxc snapshot` by hand
    op = op_for(calls, world)
    with pytest.raises(botlxc.BadInput, match="snapshot s1 has no copy of acme-tables"):
        botlxc.restore_snapshot(op.runner, botlxc.tenant_stack(op), botlxc.chosen(op), "s1")
    assert op.runner.actions == []


def test_list_joins_lxd_snapshots_and_data_copies(capsys, calls, acme, tmp_path):
    spec, world = acme
    with_snapshot(world, tmp_path / "stack", "s1")
    (tmp_path / "stack/.botlxc/snapshots/before-restore-20261127-100000/cache").mkdir(
        parents=True)
    calls(LIST, data=world)
    code, out, err = run(capsys, "snapshot", "list", "-t", "acme", "--json")
    assert code == 0
    assert json.loads(out) == {
        "before-restore-20261127-100000": {"created": "", "containers": [], "data": ["cache"]},
        "s1": {"created": "2026-11-27T10:00:00Z", "containers": ["tables", "drive", "cache"],
               "data": ["cache", "drive", "tables"]}}


def test_keep_prunes_only_the_oldest_automatic_snapshots(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False)
    world = up_world(spec)
    world[0]["snapshots"] = [{"name": n, "created_at": n} for n in (
        "auto-20261101-000000", "auto-20261102-000000", "mine")]
    op = op_for(calls, world, dry_run=True)
    name = botlxc.create_snapshot(op, None, (), keep=2)
    assert name.startswith("auto-")
    deleted = [a.argv for a in op.runner.actions if a.argv[:2] == ["lxc", "delete"]]
    assert deleted == [["lxc", "delete", "acme-cache/auto-20261101-000000"]]


def test_a_schedule_is_a_cron_line_without_systemd(calls, acme):
    spec, world = acme
    op = op_for(calls, world, dry_run=True)
    botlxc.set_schedule(op.runner, op.host, "acme", "daily", 7)
    (action,) = op.runner.actions
    assert action.argv == ["install", "-m", "0644", "/dev/stdin",
                           "/etc/cron.d/botlxc-snapshot-acme"]
    line = action.input.splitlines()[-1]
    assert line.startswith("17 3 * * * root ")
    assert line.endswith("snapshot create --tenant acme --keep 7 "
                         ">>/var/log/botlxc-snapshot-acme.log 2>&1")


def test_a_schedule_is_a_timer_with_systemd(calls, acme):
    runner = botlxc.Runner(dry_run=True)
    botlxc.set_schedule(runner, facts(systemd=True), "acme", "weekly", 4)
    assert [a.argv for a in runner.actions] == [
        ["install", "-m", "0644", "/dev/stdin",
         "/etc/systemd/system/botlxc-snapshot-acme.service"],
        ["install", "-m", "0644", "/dev/stdin", "/etc/systemd/system/botlxc-snapshot-acme.timer"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "botlxc-snapshot-acme.timer"]]
    assert "OnCalendar=Sun *-*-* 03:17:00\n" in runner.actions[1].input


# ----------------------------------------------------------------------------- update


def test_update_snapshots_upgrades_restarts_and_checks(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)
    op = op_for(calls, world, dry_run=True)
    botlxc.update_components(op, ())
    argvs = [a.argv for a in op.runner.actions]
    snap = argvs[1][-1]
    assert snap.startswith("pre-update-")
    assert argvs[0] == ["lxc", "pause", "acme-cache"]
    assert argvs[-3:] == [["lxc", "exec", "acme-cache", "--", *botlxc.UPGRADE],
                          ["lxc", "exec", "acme-cache", "--", "systemctl", "restart",
                           "cache.service"],
                          ["lxc", "exec", "acme-cache", "--", *botlxc.HEALTH_WAIT]]


def test_an_update_that_fails_health_is_rolled_back_and_exits_1(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)
    op = op_for(calls, world)
    S = str(tmp_path / "stack")
    fp = calls.fp
    fp.register(["lxc", "pause", "acme-cache"])
    fp.register(["lxc", "snapshot", "acme-cache", fp.any(min=1, max=1)])
    fp.register(["install", "-d", "-m", "0700", fp.any()])
    fp.register(["cp", "-a", "--reflink=auto", fp.any()])
    fp.register(["lxc", "start", "acme-cache"], occurrences=2)
    fp.register(["lxc", "exec", "acme-cache", "--", *botlxc.UPGRADE])
    fp.register(["lxc", "exec", "acme-cache", "--", "systemctl", "restart", "cache.service"],
                returncode=1, stderr="Job for cache.service failed\n")
    fp.register(["lxc", "exec", "acme-cache", "--", "systemctl", "stop", "cache.service"])
    fp.register(["lxc", "stop", "acme-cache", "--timeout", "120"])
    fp.register(["rm", "-rf", "--one-file-system", S + "/cache/.restoring"])
    fp.register(["install", "-d", "-m", "0700", fp.any()], occurrences=2)
    fp.register(["cp", "-a", "--reflink=auto", fp.any()])
    fp.register(["lxc", "restore", "acme-cache", fp.any(min=1, max=1)])
    fp.register(["mv", S + "/cache/data", S + "/cache/conf", S + "/cache/logs", fp.any()])
    fp.register(["mv", fp.any()])
    fp.register(["rmdir", S + "/cache/.restoring"])
    fp.register(["lxc", "exec", "acme-cache", "--", *botlxc.BOOT_WAIT])
    fp.register(["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT])
    fp.register(["lxc", "exec", "acme-cache", "--", *botlxc.HEALTH_WAIT], stdout="cache: ok\n")
    # then the host's state is brought back in line with the restored container, as up would
    calls(LIST, data=world)
    register_ready(calls, world)
    calls(["lxc", "exec", "acme-cache", "--", "sha256sum", "/etc/botlxc/secrets.env"],
          stdout="%s  /etc/botlxc/secrets.env\n" % botlxc.hashlib.sha256(
              master_text("cache").encode()).hexdigest())
    health_reads(calls, spec)
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.update_components(op, ())
    assert failed.value.exit_code == 1
    assert "update failed: cache (rolled back to snapshot pre-update-" \
        in str(failed.value)
    made = [list(argv) for argv in fp.calls]
    realign = calls.expected[1:]  # (the first is the LIST op_for registered)
    assert made[-len(realign):] == realign
    assert ["lxc", "exec", "acme-cache", "--", *botlxc.HEALTH_WAIT] in made


# ----------------------------------------------------------------------------- ports, usage


def test_ports_set_moves_the_proxy_pins_the_port_and_rewrites_env(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)
    calls(LIST, data=world)
    op = botlxc.Op("acme", botlxc.Runner(dry_run=True), facts())
    register_ready(calls, world)
    calls(["lxc", "exec", "acme-cache", "--", "sha256sum", "/etc/botlxc/secrets.env"],
          stdout="0" * 64 + "  x\n")  # differs: the install would be planned
    botlxc.set_port(op, {("cache", "valkey"): 16379})
    argvs = [a.argv for a in op.runner.actions if not a.in_process]
    assert argvs[:3] == [
        ["lxc", "config", "set", "acme-cache", "user.botlxc.pinned", "valkey"],
        ["lxc", "config", "device", "add", "acme-cache", "port-16379", "proxy",
         "listen=tcp:127.0.0.1:16379", "connect=tcp:127.0.0.1:6379"],
        ["lxc", "config", "device", "remove", "acme-cache", "port-6379"]]
    secrets = [a.argv for a in op.runner.actions if a.in_process]
    assert secrets and "cache.valkey=16379" in secrets[0]


def test_ports_set_to_a_taken_port_names_the_holder(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)
    calls(LIST, data=world)
    op = botlxc.Op("acme", botlxc.Runner(), facts())
    register_ready(calls, world, listeners={16379: ("redis-server", 77)})
    with pytest.raises(botlxc.BadInput) as failed:
        botlxc.set_port(op, {("cache", "valkey"): 16379})
    assert str(failed.value) == ("port 16379 for cache.valkey is already in use on this host "
                                 "(redis-server (pid 77))")
    assert op.runner.actions == []


def test_ports_lists_the_allocations(capsys, calls, acme):
    spec, world = acme
    world[0]["config"]["user.botlxc.pinned"] = "pg"
    calls(LIST, data=world)
    code, out, err = run(capsys, "ports", "-t", "acme", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"component": "tables", "name": "pg", "host_port": 5432, "container_port": 5432,
         "listen": "127.0.0.1", "pinned": True},
        {"component": "drive", "name": "s3", "host_port": 9000, "container_port": 9000,
         "listen": "127.0.0.1", "pinned": False},
        {"component": "cache", "name": "valkey", "host_port": 6379, "container_port": 6379,
         "listen": "127.0.0.1", "pinned": False}]


def test_usage_is_one_list_and_one_du(capsys, calls, acme, tmp_path):
    spec, world = acme
    for inst in world:
        inst["state"].update(memory={"usage": 104857600}, cpu={"usage": 12500000000},
                             processes=9)
    calls(LIST, data=world)
    S = str(tmp_path / "stack")
    dirs = ["%s/%s/%s" % (S, c, w) for c in ("tables", "drive", "cache")
            for w in ("data", "conf", "logs")]
    calls(["du", "-s", "-B1", "--one-file-system", *dirs],
          stdout="".join("%d\t%s\n" % (4096 * (i + 1), d) for i, d in enumerate(dirs)))
    code, out, err = run(capsys, "usage", "-t", "acme", "--json")
    assert code == 0 and calls.made() == calls.expected
    rows = json.loads(out)
    assert rows[0]["memory_bytes"] == 104857600 and rows[0]["cpu_seconds"] == 12.5
    assert rows[0]["processes"] == 9
    assert rows[2]["host_dirs_bytes"] == {"data": 4096 * 7, "conf": 4096 * 8, "logs": 4096 * 9}


def test_info_shows_config_devices_and_addresses(capsys, calls, acme):
    spec, world = acme
    calls(LIST, data=world)
    code, out, err = run(capsys, "info", "cache", "-t", "acme", "--json")
    data = json.loads(out)
    assert data["name"] == "acme-cache" and data["labels"]["component"] == "cache"
    assert data["devices"]["port-6379"]["listen"] == "tcp:127.0.0.1:6379"
    assert data["network"]["eth0"]["addresses"][0] == "10.101.177.25/24"
    assert data["config"]["security.protection.delete"] == "true"
    assert not any(k.startswith("volatile.") for k in data["config"])


# ----------------------------------------------------------------------------- clone, rotate


def test_clone_copies_a_snapshot_into_its_own_stack_and_brings_it_up(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    world = up_world(spec)
    calls(LIST, data=world)
    op = botlxc.Op("acme", botlxc.Runner(dry_run=True), facts())
    register_ready(calls, world, listeners={5432: ("lxd", 9)})
    botlxc.clone_tenant(op, "beta", None)
    S, B = str(tmp_path / "stack"), str(tmp_path / "botserver-stack-beta")
    argvs = [a.argv for a in op.runner.actions]
    snap = argvs[1][-1]
    assert snap.startswith("clone-beta-")
    assert ["cp", "-a", "--reflink=auto", "%s/.botlxc/snapshots/%s/tables/data" % (S, snap),
            "%s/.botlxc/snapshots/%s/tables/conf" % (S, snap),
            "%s/.botlxc/snapshots/%s/tables/logs" % (S, snap), B + "/tables"] in argvs
    assert ["rm", "-f", B + "/tables/conf/secrets.env"] in argvs
    (init,) = [a for a in argvs if a[:2] == ["lxc", "init"]]
    assert init[3] == "beta-tables" and "user.botlxc.stack=" + B in init
    (proxy,) = [a for a in argvs if "proxy" in a]
    assert proxy[5] == "port-5433"  # its own port: 5432 is the original's
    shown = [a for a in op.runner.actions if a.in_process][0].argv
    assert shown[shown.index("--tenant") + 1] == "beta"


def test_rotate_plans_new_secrets_and_the_install_that_applies_them(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)
    op = op_for(calls, world, dry_run=True)
    botlxc.rotate_secrets(op, ())
    argvs = [a.argv for a in op.runner.actions]
    assert argvs[0][argvs[0].index("--rotate"):][:2] == ["--rotate", "cache"]
    assert ["lxc", "exec", "acme-cache", "--", *INSTALL] in argvs
    assert argvs[-1][:5] == ["lxc", "config", "set", "acme-cache", "user.botlxc.installed"]
    assert OWNER and SS and tenant_instance and health_reads  # shared fixtures


def test_unlimited_lifts_a_limit_live_and_from_the_kept_ones(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)
    world[0]["config"]["limits.memory"] = "256MB"
    world[0]["devices"]["root"] = {"path": "/", "pool": "default", "type": "disk",
                                   "size": "2GiB"}
    (tmp_path / "stack/.botlxc/limits.json").write_text(json.dumps(
        {"cache": {"limits.memory": "256MB", "disk": "2GiB", "limits.cpu": "1"}}))
    op = op_for(calls, world)
    calls(["lxc", "config", "unset", "acme-cache", "limits.memory"])
    calls(["lxc", "config", "device", "unset", "acme-cache", "root", "size"])
    calls(["install", "-m", "0600", "/dev/stdin", str(tmp_path / "stack/.botlxc/limits.json")])
    botlxc.set_limits(op, "cache", None, "unlimited", "unlimited")
    assert calls.made() == calls.expected
    assert json.loads(op.runner.actions[-1].input) == {"cache": {"limits.cpu": "1"}}


def test_a_restore_whose_copy_fails_changes_no_live_data_and_starts_again(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    world = up_world(spec)
    with_snapshot(world, tmp_path / "stack", "s1", ("tables",))
    op = op_for(calls, world)
    S = str(tmp_path / "stack")
    staging = S + "/tables/.restoring"
    calls(["lxc", "exec", "acme-tables", "--", "systemctl", "stop", "tables.service"])
    calls(["lxc", "stop", "acme-tables", "--timeout", "120"])
    calls(["rm", "-rf", "--one-file-system", staging])
    calls(["install", "-d", "-m", "0700", staging])
    calls(["cp", "-a", "--reflink=auto", S + "/.botlxc/snapshots/s1/tables/data",
           S + "/.botlxc/snapshots/s1/tables/conf", S + "/.botlxc/snapshots/s1/tables/logs",
           staging], returncode=1, stderr="cp: error writing: No space left on device\n")
    calls(["lxc", "start", "acme-tables"])
    calls(["lxc", "exec", "acme-tables", "--", *botlxc.BOOT_WAIT])
    calls(["lxc", "exec", "acme-tables", "--", *botlxc.NETWORK_WAIT])
    calls(["lxc", "exec", "acme-tables", "--", *botlxc.HEALTH_WAIT], stdout="tables: ok\n")
    with pytest.raises(botlxc.CommandFailed, match="No space left"):
        botlxc.restore_snapshot(op.runner, botlxc.tenant_stack(op), botlxc.chosen(op), "s1")
    assert calls.made() == calls.expected  # no mv of the live dirs, and started again


def test_up_never_makes_an_empty_data_dir_over_a_restore_cut_short(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",), services=False)
    world = up_world(spec)
    (tmp_path / "stack/tables/data").rename(tmp_path / "stack/tables/.restoring")
    register_ready(calls, world)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BotlxcError, match="a restore was cut short"):
        botlxc.up(runner, spec)
    assert not (tmp_path / "stack/tables/data").exists()


def test_a_pause_that_fails_still_resumes_the_ones_paused_before(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables", "cache"))
    world = up_world(spec)
    op = op_for(calls, world)
    calls(["lxc", "pause", "acme-tables"])
    calls(["lxc", "pause", "acme-cache"], returncode=1, stderr="Error: freezing failed\n")
    calls(["lxc", "start", "acme-tables"], returncode=1, stderr="Error: busy\n")
    calls(["lxc", "start", "acme-cache"])  # resumed although the one before failed
    calls(["rm", "-rf", "--one-file-system", str(tmp_path / "stack/.botlxc/snapshots/s1")])
    with pytest.raises(botlxc.BotlxcError):
        botlxc.create_snapshot(op, "s1", ())
    assert sorted(calls.made()) == sorted(calls.expected)


def test_deleting_one_components_snapshot_keeps_the_others_copies(calls, acme, tmp_path):
    spec, world = acme
    with_snapshot(world, tmp_path / "stack", "s1")
    op = op_for(calls, world, dry_run=True)
    botlxc.delete_snapshot(op, "s1", ("tables",))
    snaps = str(tmp_path / "stack/.botlxc/snapshots")
    assert [a.argv for a in op.runner.actions] == [
        ["lxc", "delete", "acme-tables/s1"],
        ["rm", "-rf", "--one-file-system", snaps + "/s1/tables"],
        ["rmdir", "--ignore-fail-on-non-empty", snaps + "/s1"]]
