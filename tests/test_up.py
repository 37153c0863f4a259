"""`up` and `down` at the seam: literal argv sequences, ports, secrets, idempotence."""
import re

import pytest

import botlxc
from conftest import (ANY, DEFAULT_PORTS, IMAGE_LIST, LIST, OWNER, QUERY_NETWORKS,
                      QUERY_POOLS, QUERY_PROFILE, QUERY_SERVER, SECRETS, SS, converged_reads,
                      env_text, facts, health_reads, installed_label, instance, make_spec,
                      master_text, other_tenant, prepare_stack, register_host, register_ready,
                      register_routes, secrets_read, tenant_instance, up_world, world_facts)

V = botlxc.VERSION
HOST_READS = [QUERY_SERVER, QUERY_POOLS, QUERY_NETWORKS, QUERY_PROFILE, IMAGE_LIST, LIST, SS]
INSTALL = ["flock", "-w", "900", "/run/botlxc-install.lock", "sh", "-c",
           "mkdir -p -m 0700 /var/log/botlxc && sh /usr/local/lib/botlxc/install.sh "
           "</dev/null >/var/log/botlxc/install.log 2>&1; rc=$?; "
           "tail -n 20 /var/log/botlxc/install.log >&2; exit $rc"]
HEALTH_WAIT = ["sh", "-c",
               "i=0; until out=$(sh /usr/local/lib/botlxc/health.sh 2>&1); do i=$((i + 1)); "
               "[ $i -lt 45 ] || { echo \"$out\" >&2; exit 1; }; sleep 2; done; echo \"$out\""]
#: Every tenant container is created with LXD's delete protection on.
PROTECTED = ["-c", "security.protection.delete=true"]


def base(nth, first=OWNER):
    """Host id of the root of the nth container a run creates: ids of its own, the block
    after LXD's shared map's first one, then the next free blocks."""
    return first + 65536 * (nth + 1)


def isolated(nth, first=OWNER):
    return ["-c", "security.idmap.isolated=true",
            "-c", "security.idmap.base=%d" % base(nth, first)]


WAIT_INSTALL = ["flock", "-w", "900", "/run/botlxc-install.lock", "true"]


def marker(calls, stack):
    """A stack seen for the first time gets its root-only state dir and owner marker."""
    calls(["install", "-d", "-m", "0700", stack + "/.botlxc"])
    calls(["install", "-m", "0600", "/dev/stdin", stack + "/.botlxc/tenant"])


def host_dirs(calls, stack, component, owner=OWNER):
    """New host dirs: made, recorded (host-side) as belonging to owner's ids, given to it."""
    dirs = ["%s/%s/%s" % (stack, component, d) for d in ("data", "conf", "logs")]
    calls(["mkdir", "-p"] + dirs)
    calls(["install", "-D", "-m", "0600", "/dev/stdin", "%s/.botlxc/ids/%s" % (stack, component)])
    calls(["chown", "--no-dereference", "%d:%d" % (owner, owner)] + dirs)


def argvs(runner):
    return [action.argv for action in runner.actions]


# ----------------------------------------------------------------------------- new tenant


def register_new_tenant_containers(calls, spec):
    """What runs under the host lock for a new tenant: marker, dirs, containers, devices."""
    S = str(spec.stack)
    register_ready(calls)
    marker(calls, S)
    for nth, component in enumerate(spec.components):
        host_dirs(calls, S, component, base(nth))
    for nth, (component, port) in enumerate((("tables", 5432), ("drive", 9000),
                                             ("cache", 6379))):
        name = "acme-" + component
        calls(["lxc", "init", "botlxc/debian-12", name, "-c", "security.privileged=false",
               "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=" + component,
               "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S]
              + (["-c", "user.botlxc.engine=rclone"] if component == "drive" else [])
              + PROTECTED + isolated(nth))
        for which in ("data", "conf", "logs"):
            calls(["lxc", "config", "device", "add", name, which, "disk",
                   "source=%s/%s/%s" % (S, component, which), "path=/opt/gbo/" + which])
        calls(["lxc", "config", "device", "add", name, "port-%d" % port, "proxy",
               "listen=tcp:127.0.0.1:%d" % port, "connect=tcp:127.0.0.1:%d" % port])


def test_new_tenant_containers_only(calls, tmp_path):
    spec = make_spec(tmp_path, services=False)
    # Under the host lock: every container with ids of its own and the proxy devices that
    # reserve its ports.
    register_new_tenant_containers(calls, spec)
    # Then each one started and waited for.
    for component in ("tables", "drive", "cache"):
        name = "acme-" + component
        calls(["lxc", "start", name])
        calls(["lxc", "exec", name, "--", *botlxc.BOOT_WAIT])
        calls(["lxc", "exec", name, "--", *botlxc.NETWORK_WAIT])

    ports, failures = botlxc.up(botlxc.Runner(), spec)

    assert failures == {}
    assert ports == DEFAULT_PORTS
    assert calls.made() == calls.expected
    assert not (tmp_path / "stack" / ".env").exists()  # containers only: no secrets


def pushes(name, component):
    """`lxc file push` of each rendered file (the catalogue decides which files exist)."""
    return [["lxc", "file", "push", "-", name + dest, "--create-dirs", "--mode", mode]
            for _template, dest, mode in botlxc.COMPONENTS[component].files]


def clear_paths(name, component, binary=False):
    """What is cleared inside before the pushes: a planted link must not make them fail."""
    return ["lxc", "exec", name, "--", "rm", "-f", "--", "/etc/botlxc/secrets.env",
            *[dest for _template, dest, _mode in botlxc.COMPONENTS[component].files],
            *(["/usr/local/bin/minio"] if binary else [])]


def push_secrets(calls, stack, name, component):
    calls(clear_paths(name, component))
    calls(["lxc", "file", "push", "%s/.botlxc/secrets/%s.env" % (stack, component),
           name + "/etc/botlxc/secrets.env", "--create-dirs", "--mode", "0600"])


def register_install(calls, stack, name, component, label=ANY, running=False):
    # label: the digest of the rendered files (ANY where the test does not care)
    """What an install or repair runs, in order: wait for an earlier install (only in a
    container that was running already), secrets, files, install, health, label."""
    if running:
        calls(["lxc", "exec", name, "--", *WAIT_INSTALL])
    push_secrets(calls, stack, name, component)
    for argv in pushes(name, component):
        calls(argv)
    calls(["lxc", "exec", name, "--", *INSTALL])
    calls(["lxc", "exec", name, "--", *HEALTH_WAIT], stdout=component + ": ok\n")
    calls(["lxc", "config", "set", name, "user.botlxc.installed", label])


def register_new_tenant(calls, spec, ca_file=None, dirs=True):
    """A real `up` of a new tenant with services, in world 'ready', registered in order."""
    S = str(spec.stack)
    register_ready(calls)
    first = spec.host.subuid_base
    if dirs:
        marker(calls, S)
        for nth, component in enumerate(spec.components):
            host_dirs(calls, S, component, base(nth, first))
    else:  # the dirs are there (a tenant that was down): shifted to the new ids, recorded
        for component in spec.components:
            calls(["install", "-D", "-m", "0600", "/dev/stdin",
                   "%s/.botlxc/ids/%s" % (S, component)])
    for nth, (component, port, engine) in enumerate((
            ("tables", 5432, []), ("drive", 9000, ["-c", "user.botlxc.engine=rclone"]),
            ("cache", 6379, []))):
        name = "acme-" + component
        calls(["lxc", "init", "botlxc/debian-12", name, "-c", "security.privileged=false",
               "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=" + component,
               "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S] + engine
              + PROTECTED + isolated(nth, first))
        for which in ("data", "conf", "logs"):
            calls(["lxc", "config", "device", "add", name, which, "disk",
                   "source=%s/%s/%s" % (S, component, which), "path=/opt/gbo/" + which])
        calls(["lxc", "config", "device", "add", name, "port-%d" % port, "proxy",
               "listen=tcp:127.0.0.1:%d" % port, "connect=tcp:127.0.0.1:%d" % port])
    for component in ("tables", "drive", "cache"):
        name = "acme-" + component
        calls(["lxc", "start", name])
        calls(["lxc", "exec", name, "--", *botlxc.BOOT_WAIT])
        calls(["lxc", "exec", name, "--", *botlxc.NETWORK_WAIT])
        if ca_file:
            calls(["lxc", "file", "push", str(ca_file),
                   name + "/usr/local/share/ca-certificates/corp-proxy-root.crt",
                   "--create-dirs", "--mode", "0644"])
            calls(["lxc", "exec", name, "--", "update-ca-certificates"])
            calls(["lxc", "config", "set", name, "user.botlxc.host-ca",
                   botlxc.digest(ca_file.read_bytes())])
        register_install(calls, S, name, component)


def test_new_tenant_with_services(calls, tmp_path, ca_file):
    spec = make_spec(tmp_path, host=facts(ca_files=(ca_file,)))
    S = str(tmp_path / "stack")
    register_new_tenant(calls, spec, ca_file)
    runner = botlxc.Runner()

    ports, failures = botlxc.up(runner, spec)

    assert failures == {}
    assert calls.made() == calls.expected
    # the one in-process step: secrets, shown as the botlxc command that does the same
    secret_steps = [a for a in runner.actions if a.in_process]
    assert [a.argv for a in secret_steps] == [[
        "botlxc", "secrets", "--tenant", "acme", "--stack-dir", S, "--listen", "127.0.0.1",
        "--port", "cache.valkey=6379", "--port", "drive.s3=9000", "--port", "tables.pg=5432"]]
    # the files pushed are exactly the rendered templates
    pushed = {a.argv[4]: a.input for a in runner.actions if a.argv[:4] == ["lxc", "file",
                                                                           "push", "-"]}
    for component in spec.components:
        for dest, _mode, content in botlxc.render_files(spec, component):
            assert pushed["acme-" + component + dest] == content
    # the installed label digests the rendered files, and is set after health passed
    for component in spec.components:
        label = [a.argv[-1] for a in runner.actions if a.argv[:5] == [
            "lxc", "config", "set", "acme-" + component, "user.botlxc.installed"]]
        parts = [p for item in botlxc.render_files(spec, component) for p in item]
        assert label == [botlxc.digest(*parts, "")]


@pytest.mark.parametrize("world", ["nothing", "down"])
def test_plan_on_a_host_without_a_running_lxd(calls, tmp_path, world):
    """`up --dry-run` works before LXD runs: it plans bootstrap, image build and tenant."""
    spec = make_spec(tmp_path, host=world_facts(world))
    register_host(calls, world)
    register_host(calls, "down")  # looked at again after the planned start: still down
    register_routes(calls)
    calls(SS, stdout="")
    runner = botlxc.Runner(dry_run=True)
    ports, failures = botlxc.up(runner, spec)
    assert failures == {} and ports == DEFAULT_PORTS
    assert calls.made() == calls.expected  # no lxc call: there is no LXD to ask
    plan = argvs(runner)
    bootstrap = plan.index(["lxd", "init", "--preseed"])
    imported = plan.index(["lxc", "image", "import", "/var/cache/botlxc/image-build/meta.tar",
                           "/var/cache/botlxc/image-build/rootfs.tar", "--alias",
                           "botlxc/debian-12"])
    assert bootstrap < imported
    assert plan[imported + 2:imported + 5] == [
        ["install", "-d", "-m", "0700", str(tmp_path / "stack/.botlxc")],
        ["install", "-m", "0600", "/dev/stdin", str(tmp_path / "stack/.botlxc/tenant")],
        ["mkdir", "-p"] + [str(tmp_path / "stack/tables" / d) for d in ("data", "conf", "logs")]]
    inits = [i for i, argv in enumerate(plan) if argv[:2] == ["lxc", "init"]]
    assert [plan[i][:4] for i in inits] == [["lxc", "init", "botlxc/debian-12", "acme-" + c]
                                            for c in ("tables", "drive", "cache")]
    assert inits[0] > imported


def test_minio_engine_pushes_the_checked_binary_before_the_install(calls, tmp_path):
    binary = tmp_path / "minio"
    binary.write_bytes(b"\x7fELF minio")
    sha = botlxc.file_sha256(binary)
    spec = make_spec(tmp_path, components=("drive",), engines={"drive": "minio"},
                     artifacts={"drive": (str(binary), sha)})
    register_ready(calls)
    runner = botlxc.Runner(dry_run=True)
    ports, failures = botlxc.up(runner, spec)
    assert failures == {} and calls.made() == calls.expected
    assert ports == {("drive", "s3"): 9000, ("drive", "console"): 9001}
    plan = argvs(runner)
    (init,) = [argv for argv in plan if argv[:2] == ["lxc", "init"]]
    assert init[-8:] == ["-c", "user.botlxc.engine=minio", *PROTECTED, *isolated(0)]
    assert ["lxc", "config", "device", "add", "acme-drive", "port-9001", "proxy",
            "listen=tcp:127.0.0.1:9001", "connect=tcp:127.0.0.1:9001"] in plan
    install = plan.index(["lxc", "exec", "acme-drive", "--", *INSTALL])
    assert plan[install - 1] == ["lxc", "file", "push", str(binary),
                                 "acme-drive/usr/local/bin/minio", "--create-dirs", "--mode",
                                 "0755"]
    assert plan[install - 1 - len(pushes("acme-drive", "drive")):install - 1] == \
        pushes("acme-drive", "drive")


def test_a_new_minio_binary_is_a_reinstall_and_the_same_one_is_not(calls, tmp_path):
    old, new = tmp_path / "minio-old", tmp_path / "minio-new"
    old.write_bytes(b"\x7fELF minio 1")
    new.write_bytes(b"\x7fELF minio 2")

    def spec_with(binary):
        return make_spec(tmp_path, components=("drive",), engines={"drive": "minio"},
                         artifacts={"drive": (str(binary), botlxc.file_sha256(binary))})

    installed = spec_with(old)
    installed.artifacts = {"drive": (old, botlxc.file_sha256(old))}
    world = up_world(installed)  # installed with the old binary
    install = ["lxc", "exec", "acme-drive", "--", *INSTALL]
    register_ready(calls, world)
    converged_reads(calls, installed)
    register_ready(calls, world)
    same, newer = botlxc.Runner(dry_run=True), botlxc.Runner(dry_run=True)
    assert botlxc.up(same, spec_with(old))[1] == {}
    assert botlxc.up(newer, spec_with(new))[1] == {}
    assert calls.made() == calls.expected
    assert same.actions == []
    assert install in argvs(newer)
    assert ["lxc", "file", "push", str(new), "acme-drive/usr/local/bin/minio",
            "--create-dirs", "--mode", "0755"] in argvs(newer)


# ----------------------------------------------------------------------------- tenant up


def test_tenant_already_up_changes_nothing(calls, tmp_path, ca_file):
    # its own proxy devices listen on the host, so the host sees those ports taken
    spec = make_spec(tmp_path, host=facts(ca_files=(ca_file,)))
    register_ready(calls, up_world(spec) + other_tenant({"tables": 5433}), listeners={
        5432: ("lxd", 900), 9000: ("lxd", 901), 6379: ("lxd", 902), 5433: ("lxd", 903)})
    converged_reads(calls, spec)
    runner = botlxc.Runner()

    ports, failures = botlxc.up(runner, spec)

    assert runner.actions == []
    assert calls.made() == calls.expected  # only reads: host, image, list, health
    assert (failures, ports) == ({}, DEFAULT_PORTS)


def test_tenant_already_up_dry_run_plans_nothing(calls, tmp_path, ca_file):
    spec = make_spec(tmp_path, host=facts(ca_files=(ca_file,)))
    register_ready(calls, up_world(spec))
    converged_reads(calls, spec)
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    assert calls.made() == calls.expected
    assert calls.made()[:len(HOST_READS)] == HOST_READS
    assert runner.script() == ("#!/usr/bin/env bash\n# botlxc %s runbook: the changes botlxc "
                               "would make, in order.\nset -eu\n" % V)


def test_stopped_instance_is_started_not_recreated(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec)
    world[2] = tenant_instance(spec, "cache", status="Stopped")
    register_ready(calls, world)
    converged_reads(calls, spec, ["tables", "drive"])
    calls(["lxc", "start", "acme-cache"])
    calls(["lxc", "exec", "acme-cache", "--", *botlxc.BOOT_WAIT])
    calls(["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT])
    converged_reads(calls, spec, ["cache"])
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert calls.made() == calls.expected
    assert argvs(runner) == [["lxc", "start", "acme-cache"],
                             ["lxc", "exec", "acme-cache", "--", *botlxc.BOOT_WAIT],
                             ["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT]]


def test_degraded_boot_counts_and_a_missing_lease_names_the_step(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False)
    register_ready(calls)
    marker(calls, str(tmp_path / "stack"))
    host_dirs(calls, str(tmp_path / "stack"), "cache", base(0))
    calls(["lxc", "init", "botlxc/debian-12", "acme-cache", "-c", "security.privileged=false",
           "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=cache",
           "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=%s/stack" % tmp_path,
           *PROTECTED, *isolated(0)])
    for which in ("data", "conf", "logs"):
        calls(["lxc", "config", "device", "add", "acme-cache", which, "disk",
               "source=%s/stack/cache/%s" % (tmp_path, which), "path=/opt/gbo/" + which])
    calls(["lxc", "config", "device", "add", "acme-cache", "port-6379", "proxy",
           "listen=tcp:127.0.0.1:6379", "connect=tcp:127.0.0.1:6379"])
    calls(["lxc", "start", "acme-cache"])
    calls(["lxc", "exec", "acme-cache", "--", *botlxc.BOOT_WAIT],
          returncode=1, stdout="degraded\n")  # degraded still counts as booted
    calls(["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT], returncode=124)
    failures = botlxc.up(botlxc.Runner(), spec)[1]
    assert calls.made() == calls.expected
    assert isinstance(failures["cache"], botlxc.CommandFailed)
    assert "acme-cache: network (no lease in 90 s" in str(failures["cache"])


@pytest.mark.skipif(botlxc.os.geteuid() != 0, reason="giving a dir to root needs root")
def test_host_dirs_with_the_wrong_owner_are_chowned_only(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec)
    botlxc.os.chown(tmp_path / "stack/cache/logs", 0, 0)
    register_ready(calls, world)
    calls(["chown", "--no-dereference", "%d:%d" % (OWNER, OWNER),
           str(tmp_path / "stack/cache/logs")])
    converged_reads(calls, spec)
    runner = botlxc.Runner()
    botlxc.up(runner, spec)
    assert calls.made() == calls.expected
    assert len(runner.actions) == 1


def test_privileged_instance_dirs_belong_to_root(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False, privileged=True)
    register_ready(calls)
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    assert calls.made() == calls.expected
    S = str(tmp_path / "stack")
    assert argvs(runner)[2:6] == [
        ["mkdir", "-p", S + "/cache/data", S + "/cache/conf", S + "/cache/logs"],
        ["install", "-D", "-m", "0600", "/dev/stdin", S + "/.botlxc/ids/cache"],
        ["chown", "--no-dereference", "0:0", S + "/cache/data", S + "/cache/conf",
         S + "/cache/logs"],
        ["lxc", "init", "botlxc/debian-12", "acme-cache", "-c", "security.privileged=true",
         "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=cache",
         "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S, *PROTECTED]]


def test_each_container_gets_ids_of_its_own_that_no_other_holds(tmp_path):
    spec = make_spec(tmp_path, host=facts(subuid_base=100000, subuid_size=10000001))
    snapshot = {"all": [instance("other-x", {}, {})], "mine": {}}
    # someone else's isolated container holds the second block
    snapshot["all"][0]["config"]["volatile.idmap.current"] = botlxc.json.dumps(
        [{"Isuid": True, "Hostid": 231072, "Nsid": 0, "Maprange": 65536}])
    assert botlxc.allocate_bases(spec, snapshot) == {"tables": 165536, "drive": 296608,
                                                     "cache": 362144}
    mine = instance("acme-cache", {"security.idmap.isolated": "true",
                                   "security.idmap.base": "427680"}, {})
    snapshot["mine"]["cache"] = mine
    assert botlxc.allocate_bases(spec, snapshot)["cache"] == 427680  # kept
    privileged = instance("acme-cache", {"security.privileged": "true"}, {})
    snapshot["mine"]["cache"] = privileged
    assert botlxc.allocate_bases(spec, snapshot)["cache"] == 0


def test_no_free_id_range_is_a_clear_error(tmp_path):
    spec = make_spec(tmp_path, host=facts(subuid_base=100000, subuid_size=65536 * 2))
    with pytest.raises(botlxc.BotlxcError, match="no free id range for acme-drive"):
        botlxc.allocate_bases(spec, {"all": [], "mine": {}})


# ----------------------------------------------------------------------------- ports


def test_taken_ports_move_to_the_next_free_one(calls, tmp_path, capsys):
    """5432 and 9000 have host listeners; tenant beta forwards 5433 and 6379."""
    spec = make_spec(tmp_path, services=False)
    register_ready(calls, other_tenant({"tables": 5433, "cache": 6379}),
                   listeners={5432: ("postgres", 700), 9000: ("minio", 701)})
    runner = botlxc.Runner(dry_run=True)
    ports, _ = botlxc.up(runner, spec)
    assert ports == {("tables", "pg"): 5434, ("drive", "s3"): 9001,
                     ("cache", "valkey"): 6380}
    assert [a for a in argvs(runner) if "proxy" in a] == [
        ["lxc", "config", "device", "add", "acme-tables", "port-5434", "proxy",
         "listen=tcp:127.0.0.1:5434", "connect=tcp:127.0.0.1:5432"],
        ["lxc", "config", "device", "add", "acme-drive", "port-9001", "proxy",
         "listen=tcp:127.0.0.1:9001", "connect=tcp:127.0.0.1:9000"],
        ["lxc", "config", "device", "add", "acme-cache", "port-6380", "proxy",
         "listen=tcp:127.0.0.1:6380", "connect=tcp:127.0.0.1:6379"]]
    err = capsys.readouterr().err
    assert "ports: 5432 is taken; tables.pg gets host port 5434" in err
    assert "ports: 6379 is taken; cache.valkey gets host port 6380" in err
    assert not any(a[:2] == ["lxc", "delete"] or "beta" in " ".join(a) for a in argvs(runner))


def test_minio_console_does_not_collide_with_a_moved_s3_port(tmp_path):
    spec = make_spec(tmp_path, components=("drive",), engines={"drive": "minio"})
    snapshot = {"all": [], "mine": {}}
    assert botlxc.allocate_ports(spec, snapshot, {9000: "minio (pid 7)"}) == {
        ("drive", "s3"): 9001, ("drive", "console"): 9002}


def test_picked_port_that_is_taken_is_refused_before_any_change(calls, tmp_path):
    spec = make_spec(tmp_path, port_picks={("tables", "pg"): 5433})
    register_ready(calls, other_tenant({"tables": 5433}))
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput) as failed:
        botlxc.up(runner, spec)
    assert str(failed.value) == ("port 5433 for tables.pg is already in use on this host "
                                 "(instance beta-tables)")
    assert failed.value.exit_code == 2
    assert runner.actions == []
    assert calls.made() == calls.expected


def test_picked_port_is_used(calls, tmp_path):
    spec = make_spec(tmp_path, services=False, port_picks={("tables", "pg"): 15432})
    register_ready(calls)
    ports, _ = botlxc.up(botlxc.Runner(dry_run=True), spec)
    assert ports == {**DEFAULT_PORTS, ("tables", "pg"): 15432}


def test_a_pick_wins_over_another_components_default(tmp_path):
    """cache.valkey=5432 is free on the host: tables must move, not the pick be refused."""
    spec = make_spec(tmp_path, port_picks={("cache", "valkey"): 5432})
    ports = botlxc.allocate_ports(spec, {"all": [], "mine": {}}, {})
    assert ports[("cache", "valkey")] == 5432
    assert ports[("tables", "pg")] == 5433


def test_remapping_a_port_of_a_running_tenant(calls, tmp_path):
    spec = make_spec(tmp_path, port_picks={("tables", "pg"): 15432})
    register_ready(calls, up_world(spec))
    calls(["lxc", "config", "set", "acme-tables", "user.botlxc.pinned", "pg"])
    calls(["lxc", "config", "device", "add", "acme-tables", "port-15432", "proxy",
           "listen=tcp:127.0.0.1:15432", "connect=tcp:127.0.0.1:5432"])
    calls(["lxc", "config", "device", "remove", "acme-tables", "port-5432"])
    converged_reads(calls, spec)
    runner = botlxc.Runner()
    ports, failures = botlxc.up(runner, spec)
    assert failures == {}
    assert calls.made() == calls.expected  # no reinstall: the service inside is unchanged
    assert [a.argv[:2] for a in runner.actions if a.in_process] == [["botlxc", "secrets"]]
    assert (tmp_path / "stack/.env").read_text() == env_text(ports={("tables", "pg"): 15432})


# ----------------------------------------------------------------------------- refusals


def test_switching_the_drive_engine_in_place_is_refused(calls, tmp_path):
    spec = make_spec(tmp_path, services=False)
    world = up_world(make_spec(tmp_path, services=False, engines={"drive": "minio"}),
                     installed=False)
    register_ready(calls, world)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput, match=r"acme-drive runs drive engine minio; switching "
                       r"engines is not supported in place \(down, then up with "
                       r"--engine drive=rclone\)"):
        botlxc.up(runner, spec)
    assert runner.actions == [] and calls.made() == calls.expected


def test_an_unlabelled_instance_with_the_tenants_name_is_never_taken_over(calls, tmp_path):
    spec = make_spec(tmp_path, services=False)
    stranger = instance("acme-cache", {"user.owner": "someone else"}, {})
    register_ready(calls, [stranger])
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput,
                       match="acme-cache exists but is not botlxc's for tenant acme"):
        botlxc.up(runner, spec)
    assert runner.actions == [] and calls.made() == calls.expected


def test_a_different_stack_dir_for_an_existing_tenant_is_refused(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec, installed=False)
    register_ready(calls, world)
    spec.stack = tmp_path / "elsewhere"
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput, match="keeps its data in"):
        botlxc.up(runner, spec)
    assert runner.actions == [] and calls.made() == calls.expected


def test_a_data_mount_pointing_elsewhere_is_never_repointed(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False)
    world = up_world(spec, installed=False)
    world[0]["devices"]["data"]["source"] = "/srv/old-cache-data"
    register_ready(calls, world)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.up(runner, spec)
    assert str(failed.value).startswith(
        "acme-cache: device data points at /srv/old-cache-data, expected %s/stack/cache/data"
        % tmp_path)
    assert failed.value.exit_code == 1
    assert runner.actions == [] and calls.made() == calls.expected


def test_one_failing_component_does_not_stop_the_others(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables", "cache"))
    world = up_world(spec)
    world[1]["config"]["user.botlxc.installed"] = "0000000000000000"  # cache needs install
    register_ready(calls, world)
    converged_reads(calls, spec, ["tables"])
    calls(["lxc", "exec", "acme-cache", "--", *WAIT_INSTALL])
    push_secrets(calls, str(spec.stack), "acme-cache", "cache")
    for argv in pushes("acme-cache", "cache"):
        calls(argv)
    for _ in range(3):  # the install is retried (mirror hiccups), then the real error shows
        calls(["lxc", "exec", "acme-cache", "--", *INSTALL], returncode=100,
              stderr="E: Unable to locate package valkey-server\n")
    runner = botlxc.Runner()
    ports, failures = botlxc.up(runner, spec)
    assert calls.made() == calls.expected
    assert list(failures) == ["cache"]
    assert isinstance(failures["cache"], botlxc.CommandFailed)
    assert str(failures["cache"]) == (
        "acme-cache: install (log: botlxc logs cache -t acme): command failed (exit 100)"
        ": lxc exec acme-cache -- %s -- E: Unable to locate package valkey-server"
        % botlxc.shlex.join(INSTALL))


def test_components_run_concurrently_each_in_its_own_order(calls, tmp_path):
    spec = make_spec(tmp_path, services=False, jobs=3)
    register_new_tenant_containers(calls, spec)
    per_component = {}
    for component in spec.components:
        name = "acme-" + component
        sequence = [["lxc", "start", name],
                    ["lxc", "exec", name, "--", *botlxc.BOOT_WAIT],
                    ["lxc", "exec", name, "--", *botlxc.NETWORK_WAIT]]
        for argv in sequence:
            calls(argv)
        per_component[name] = sequence
    prepared = len(calls.expected) - 9
    assert botlxc.up(botlxc.Runner(), spec)[1] == {}
    made = calls.made()
    assert sorted(made) == sorted(calls.expected)
    # Everything under the host lock in order (one thread), then each container in its own.
    assert made[:prepared] == calls.expected[:prepared]
    for name, sequence in per_component.items():
        assert [argv for argv in made[prepared:] if name in argv] == sequence


# ----------------------------------------------------------------------------- secrets


def read_env(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if "=" in line and not line.startswith("#"))


def secret_values(stack):
    values = []
    for component in botlxc.DEFAULT_COMPONENTS:
        values += read_env(stack / ".botlxc/secrets" / (component + ".env")).values()
    return values


def new_tenant_real_run(calls, spec, dirs=True):
    register_new_tenant(calls, spec, dirs=dirs)
    runner = botlxc.Runner()
    ports, failures = botlxc.up(runner, spec)
    assert failures == {}
    assert calls.made() == calls.expected
    return runner


def test_secrets_are_generated_once_private_and_never_sent(calls, tmp_path):
    spec = make_spec(tmp_path)
    runner = new_tenant_real_run(calls, spec)
    stack = tmp_path / "stack"
    values = secret_values(stack)
    assert len(values) == 4 and len(set(values)) == 4
    assert oct((stack / ".botlxc").stat().st_mode & 0o777) == "0o700"
    assert oct((stack / ".botlxc/secrets").stat().st_mode & 0o777) == "0o700"
    for component, keys in (("tables", ["TABLES_PASSWORD"]),
                            ("drive", ["DRIVE_ACCESSKEY", "DRIVE_SECRET"]),
                            ("cache", ["CACHE_PASSWORD"])):
        path = stack / ".botlxc/secrets" / (component + ".env")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert path.stat().st_uid == botlxc.os.geteuid()  # the host's, not the container's
        found = read_env(path)
        assert list(found) == keys
        for key, value in found.items():
            assert re.fullmatch(r"[A-Za-z0-9]{%d}" % (20 if key == "DRIVE_ACCESSKEY" else 32),
                                value), key
        # nothing secret is left on the mounts, where the container writes
        assert not (stack / component / "conf" / "secrets.env").exists()
    env = stack / ".env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    s = {k: v for c in botlxc.DEFAULT_COMPONENTS
         for k, v in read_env(stack / ".botlxc/secrets" / (c + ".env")).items()}
    assert env.read_text() == (
        "# BotServer settings for tenant acme, written by botlxc (keep private)\n"
        "DATABASE_URL=postgres://gbuser:%(TABLES_PASSWORD)s@127.0.0.1:5432/botserver\n"
        "DRIVE_SERVER=http://127.0.0.1:9000\n"
        "DRIVE_ACCESSKEY=%(DRIVE_ACCESSKEY)s\n"
        "DRIVE_SECRET=%(DRIVE_SECRET)s\n"
        "CACHE_URL=redis://gbuser:%(CACHE_PASSWORD)s@127.0.0.1:6379\n" % s)
    sent = [" ".join(argv) for argv in calls.made()]
    sent += [" ".join(a.argv) + "\n" + (a.input or "") for a in runner.actions]
    script = runner.script()
    for value in values:
        assert not any(value in text for text in sent)
        assert value not in script


def test_secrets_are_reused_on_the_next_run(calls, tmp_path):
    spec = make_spec(tmp_path, services=True)
    prepare_stack(spec)
    before = {p: p.read_text() for p in (tmp_path / "stack").rglob("*") if p.is_file()}
    (tmp_path / "stack" / ".env").unlink()  # lost .env: rewritten from the kept secrets
    register_new_tenant(calls, spec, dirs=False)
    # the containers are new: the same secrets are pushed, so the label is known in advance
    for component in spec.components:
        calls.expected[[i for i, argv in enumerate(calls.expected) if argv[:5] == [
            "lxc", "config", "set", "acme-" + component, "user.botlxc.installed"]][0]][
            -1] = installed_label(spec, component)
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert calls.made() == calls.expected
    after = {p: p.read_text() for p in (tmp_path / "stack").rglob("*") if p.is_file()}
    assert after == before
    for value in secret_values(tmp_path / "stack"):
        assert value not in runner.script()
        assert not any(value in " ".join(argv) for argv in calls.made())


def test_the_hosts_pip_index_travels_with_the_secrets_not_in_a_script(calls, tmp_path):
    """An index URL may hold credentials: it goes into the pushed 0600 file only."""
    url = "https://ci:s3cr3t@pypi.internal.example/simple"
    spec = make_spec(tmp_path, host=facts(pip_index_url=url))
    runner = new_tenant_real_run(calls, spec)
    for component in spec.components:  # only the drive installs with pip
        master = (tmp_path / "stack/.botlxc/secrets" / (component + ".env")).read_text()
        assert master.endswith("\nPIP_INDEX_URL=%s\n" % url) == (component == "drive")
    assert "s3cr3t" not in runner.script()
    assert not any("s3cr3t" in (a.input or "") + " ".join(a.argv) for a in runner.actions)


def test_legacy_secrets_on_the_conf_mount_are_adopted_when_they_look_right(calls, tmp_path):
    """botlxc < 0.3 kept them on the conf mount: read as untrusted input, then moved."""
    spec = make_spec(tmp_path, components=("tables", "cache"))
    world = up_world(spec)
    state = tmp_path / "stack/.botlxc/secrets"
    for component in ("tables", "cache"):
        (state / (component + ".env")).unlink()
    conf = tmp_path / "stack/tables/conf/secrets.env"
    conf.write_text("TABLES_PASSWORD=%s\n" % SECRETS["tables"]["TABLES_PASSWORD"])
    # the cache container planted a command where a password belongs
    (tmp_path / "stack/cache/conf/secrets.env").write_text("CACHE_PASSWORD=$(touch /pwned)\n")
    register_ready(calls, world)
    converged_reads(calls, spec, ["tables"])
    secrets_read(calls, spec, "cache")  # the old one: differs from the new host copy
    register_install(calls, str(spec.stack), "acme-cache", "cache", running=True)
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert calls.made() == calls.expected
    assert (state / "tables.env").read_text() == master_text("tables")  # adopted: no change
    cache = read_env(state / "cache.env")["CACHE_PASSWORD"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", cache)  # refused: a new one, applied by install
    assert "$(" not in (tmp_path / "stack/.env").read_text()
    assert "redis://gbuser:%s@127.0.0.1:6379" % cache in (tmp_path / "stack/.env").read_text()


def test_env_readable_by_others_is_made_private_again(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec)
    env = tmp_path / "stack" / ".env"
    env.chmod(0o644)
    register_ready(calls, world)
    converged_reads(calls, spec)
    runner = botlxc.Runner()
    botlxc.up(runner, spec)
    assert calls.made() == calls.expected
    assert [a.argv[:2] for a in runner.actions] == [["botlxc", "secrets"]]
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    assert env.read_text() == env_text()


def test_env_keeps_the_lines_botlxc_does_not_own(calls, tmp_path):
    """A BotServer checkout's .env: only botlxc's keys change, in place."""
    spec = make_spec(tmp_path)
    world = up_world(spec)
    env = tmp_path / "stack" / ".env"
    env.write_text("# my settings\nBOT_NAME=helper\nDATABASE_URL=postgres://old\n"
                   "export EMAIL_FROM=bot@example.org\n")
    register_ready(calls, world)
    converged_reads(calls, spec)
    botlxc.up(botlxc.Runner(), spec)
    ours = env_text().splitlines()[1:]
    assert env.read_text().splitlines() == [
        "# my settings", "BOT_NAME=helper", ours[0], "export EMAIL_FROM=bot@example.org",
        *ours[1:]]


def test_partial_up_keeps_the_other_components_in_env(calls, tmp_path):
    """`up -c cache` on a tenant that is up must not drop DATABASE_URL from .env."""
    full = make_spec(tmp_path)
    world = up_world(full)
    spec = make_spec(tmp_path, components=("cache",))
    register_ready(calls, world)
    converged_reads(calls, spec)
    runner = botlxc.Runner()
    botlxc.up(runner, spec)
    assert (tmp_path / "stack" / ".env").read_text() == env_text()
    assert runner.actions == []


# ----------------------------------------------------------------------------- repair


def test_an_unhealthy_service_is_repaired_and_labelled_only_after_health(calls, tmp_path):
    """Package removed inside: the digest still matches, health fails -> full install."""
    spec = make_spec(tmp_path, components=("cache",))
    register_ready(calls, up_world(spec))
    secrets_read(calls, spec, "cache")
    calls(["lxc", "exec", "acme-cache", "--", "sh", "/usr/local/lib/botlxc/health.sh"],
          returncode=1, stdout="cache: PING got: sh: 1: valkey-cli: not found\n")
    register_install(calls, str(spec.stack), "acme-cache", "cache",
                     label=installed_label(spec, "cache"), running=True)
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert calls.made() == calls.expected
    assert argvs(runner)[-1][-2:] == ["user.botlxc.installed", installed_label(spec, "cache")]


def test_a_lost_master_secret_is_regenerated_and_applied(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    world = up_world(spec)
    (tmp_path / "stack/.botlxc/secrets/tables.env").unlink()
    register_ready(calls, world)
    secrets_read(calls, spec, "tables")  # the container still has the lost one
    register_install(calls, str(spec.stack), "acme-tables", "tables", running=True)
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert calls.made() == calls.expected
    new = read_env(tmp_path / "stack/.botlxc/secrets/tables.env")["TABLES_PASSWORD"]
    assert new != SECRETS["tables"]["TABLES_PASSWORD"]
    assert "gbuser:%s@" % new in (tmp_path / "stack/.env").read_text()


def test_a_failed_health_after_install_leaves_no_installed_label(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    world = up_world(spec, installed=False)
    register_ready(calls, world)
    calls(["lxc", "exec", "acme-tables", "--", *WAIT_INSTALL])
    push_secrets(calls, str(spec.stack), "acme-tables", "tables")
    for argv in pushes("acme-tables", "tables"):
        calls(argv)
    calls(["lxc", "exec", "acme-tables", "--", *INSTALL])
    calls(["lxc", "exec", "acme-tables", "--", *HEALTH_WAIT], returncode=1,
          stderr="tables: not accepting connections on 127.0.0.1:5432 (tables.service failed)\n")
    runner = botlxc.Runner()
    failures = botlxc.up(runner, spec)[1]
    assert calls.made() == calls.expected
    assert str(failures["tables"]) == (
        "acme-tables: unhealthy after install: tables: not accepting connections on "
        "127.0.0.1:5432 (tables.service failed) (see: botlxc logs tables -t acme)")
    assert not any("user.botlxc.installed" in argv for argv in argvs(runner))


# ----------------------------------------------------------------------------- down


def stop_and_delete(calls, name):
    calls(["lxc", "stop", name, "--timeout", "120"])
    calls(["lxc", "config", "unset", name, "security.protection.delete"])
    calls(["lxc", "delete", name])


def test_down_stops_cleanly_then_deletes_only_the_tenants_instances(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = other_tenant({"tables": 5433}) + up_world(spec, installed=False)
    # an unlabelled instance that happens to be called like ours is not ours
    world.append(instance("acme-llm", {}, {}))
    # a copy keeps the labels (`lxc copy acme-tables acme-tables-backup`): not ours either
    copy = tenant_instance(spec, "tables")
    copy["name"] = "acme-tables-backup"
    world.append(copy)
    world[-2 - 1]["status"] = "Stopped"  # acme-cache is stopped already: just deleted
    calls(LIST, data=world)
    stop_and_delete(calls, "acme-tables")
    stop_and_delete(calls, "acme-drive")
    calls(["lxc", "config", "unset", "acme-cache", "security.protection.delete"])
    calls(["lxc", "delete", "acme-cache"])
    runner = botlxc.Runner()
    removed, foreign = botlxc.down(runner, botlxc.observe_tenant(runner, "acme"), ())
    assert calls.made() == calls.expected
    assert removed == [("acme-" + c, str(tmp_path / "stack")) for c in ("tables", "drive",
                                                                        "cache")]
    assert foreign == ["acme-tables-backup"]
    # the data stays on the host, untouched
    assert (tmp_path / "stack" / ".env").read_text() == env_text()
    assert (tmp_path / "stack" / "tables" / "data").is_dir()


def test_a_container_that_will_not_stop_in_time_is_forced(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    calls(LIST, data=up_world(spec, installed=False))
    calls(["lxc", "stop", "acme-tables", "--timeout", "120"], returncode=1,
          stderr="Error: Failed shutting down instance: context deadline exceeded\n")
    calls(["lxc", "stop", "acme-tables", "--force"])
    calls(["lxc", "config", "unset", "acme-tables", "security.protection.delete"])
    calls(["lxc", "delete", "acme-tables"])
    runner = botlxc.Runner()
    botlxc.down(runner, botlxc.observe_tenant(runner, "acme"), ())
    assert calls.made() == calls.expected


def test_down_one_component_and_an_absent_tenant(calls, tmp_path):
    spec = make_spec(tmp_path)
    calls(LIST, data=up_world(spec, installed=False))
    stop_and_delete(calls, "acme-cache")
    calls(LIST, data=[])
    runner = botlxc.Runner()
    assert botlxc.down(runner, botlxc.observe_tenant(runner, "acme"), ("cache",)) == (
        [("acme-cache", str(tmp_path / "stack"))], [])
    assert botlxc.down(runner, botlxc.observe_tenant(runner, "acme"), ()) == ([], [])
    assert calls.made() == calls.expected
    assert argvs(runner) == [["lxc", "stop", "acme-cache", "--timeout", "120"],
                             ["lxc", "config", "unset", "acme-cache",
                              "security.protection.delete"],
                             ["lxc", "delete", "acme-cache"]]


def test_a_copy_with_the_tenants_labels_is_foreign_to_up_and_status(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec)
    copy = tenant_instance(spec, "cache", status="Stopped")  # as `lxc copy` leaves it
    copy["name"] = "acme-cache-copy"
    register_ready(calls, world + [copy])
    converged_reads(calls, spec)
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert runner.actions == [] and calls.made() == calls.expected
    calls(LIST, data=world + [copy])
    health_reads(calls, spec)
    runner = botlxc.Runner()
    rows = botlxc.status_rows(runner, botlxc.observe_tenant(runner, "acme"), "acme")
    assert [r["name"] for r in rows] == ["acme-tables", "acme-drive", "acme-cache",
                                         "acme-cache-copy"]
    assert rows[-1]["health"] == ("foreign: has tenant acme's labels but not its name; "
                                  "botlxc leaves it alone")


@pytest.mark.parametrize("listen, host", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
                                          ("10.9.8.7", "10.9.8.7"), ("::", "127.0.0.1"),
                                          ("::1", "[::1]")])
def test_env_points_where_the_ports_listen(listen, host, tmp_path):
    spec = make_spec(tmp_path, listen=listen)
    text = "\n".join(botlxc.env_lines(spec, dict(DEFAULT_PORTS), SECRETS)) + "\n"
    assert "DRIVE_SERVER=http://%s:9000\n" % host in text
    assert "@%s:5432/botserver\n" % host in text
    assert "@%s:6379\n" % host in text


def test_an_ipv6_listen_address_is_bracketed_for_lxd(tmp_path):
    spec = make_spec(tmp_path, components=("cache",), listen="::1")
    devices = botlxc.wanted_devices(spec, "cache", {("cache", "valkey"): 6379})
    assert devices["port-6379"]["listen"] == "tcp:[::1]:6379"


# ----------------------------------------------------------------------------- locks


def test_a_held_lock_names_its_holder_then_fails_after_the_wait(tmp_path, capsys):
    run = tmp_path / "run"
    with botlxc.Lock(run, "tenant-acme"):
        holder = (run / "tenant-acme.lock").read_text()
        assert holder.startswith("pid %d: botlxc" % botlxc.os.getpid())
        with pytest.raises(botlxc.BotlxcError) as failed:
            botlxc.Lock(run, "tenant-acme", wait=0).acquire()
    assert "the tenant-acme lock is still held by pid %d: botlxc" % botlxc.os.getpid() \
        in str(failed.value)
    assert failed.value.exit_code == 1
    with botlxc.Lock(run, "tenant-acme", wait=0):  # released: free again
        pass
    assert oct(run.stat().st_mode & 0o777) == "0o700"


def test_locks_refuse_a_lock_dir_others_could_write_and_a_planted_link(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    with pytest.raises(botlxc.BotlxcError, match="mode 0700"):
        botlxc.Lock(open_dir, "host", wait=0).acquire()
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (run / "host.lock").symlink_to(victim)
    with pytest.raises(OSError):  # O_NOFOLLOW: ELOOP, and the victim is untouched
        botlxc.Lock(run, "host", wait=0).acquire()
    assert victim.read_text() == "keep me\n"


def test_a_changing_command_as_a_normal_user_is_one_clear_line(calls):
    with pytest.raises(botlxc.BotlxcError, match="botlxc up needs root") as failed:
        botlxc.check_can_change(facts(root=False), False, "up")
    assert failed.value.exit_code == 1
    botlxc.check_can_change(facts(root=False), True, "up")  # a dry run may
    botlxc.check_can_change(facts(), False, "up")
    assert calls.made() == []


def test_dependency_waves_order_dependents_after_what_they_need():
    assert botlxc.dependency_waves(("tables", "drive", "cache")) == [["tables", "drive",
                                                                     "cache"]]
    catalogue = dict(botlxc.COMPONENTS)
    catalogue["cache"] = botlxc.dataclasses.replace(catalogue["cache"], depends_on=("tables",))
    assert botlxc.dependency_waves(("tables", "drive", "cache"), catalogue) == [
        ["tables", "drive"], ["cache"]]
    assert botlxc.dependency_waves(("cache",), catalogue) == [["cache"]]  # not in this run
    catalogue["tables"] = botlxc.dataclasses.replace(catalogue["tables"], depends_on=("cache",))
    with pytest.raises(botlxc.BotlxcError, match="in a circle"):
        botlxc.dependency_waves(("tables", "cache"), catalogue)


def test_the_host_lock_covers_ports_and_containers_and_not_the_installs(calls, tmp_path):
    """Port choice and the proxy devices that reserve the ports happen under the host lock;
    start, install and health do not (other tenants' runs would wait for them)."""
    spec = make_spec(tmp_path)
    register_new_tenant(calls, spec)
    seen = {}

    class HostLock:
        def __enter__(self):
            seen["entered"] = len(calls.fp.calls)

        def __exit__(self, *exc):
            seen["left"] = len(calls.fp.calls)

    assert botlxc.up(botlxc.Runner(), spec, HostLock())[1] == {}
    made = calls.made()
    assert seen["entered"] == 0
    under = made[:seen["left"]]
    assert under[-1][:4] == ["lxc", "config", "device", "add"] and "proxy" in under[-1]
    assert SS in under and sum(argv[:2] == ["lxc", "init"] for argv in under) == 3
    assert not any(argv[:2] == ["lxc", "start"] for argv in under)
