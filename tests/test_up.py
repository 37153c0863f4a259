"""`up` and `down` at the seam: literal argv sequences, ports, secrets, idempotence."""
import re

import pytest

import botlxc
from conftest import (DEFAULT_PORTS, IMAGE_LIST, LIST, OWNER, QUERY_NETWORKS, QUERY_POOLS,
                      QUERY_PROFILE, QUERY_SERVER, SECRETS, env_text, facts, health_reads,
                      installed_label, instance, make_spec, other_tenant, prepare_stack,
                      register_host, register_ready, register_routes, tenant_instance,
                      up_world, world_facts)

V = botlxc.VERSION
HOST_READS = [QUERY_SERVER, QUERY_POOLS, QUERY_NETWORKS, QUERY_PROFILE, IMAGE_LIST, LIST]


def argvs(runner):
    return [action.argv for action in runner.actions]


# ----------------------------------------------------------------------------- new tenant


def test_new_tenant_containers_only(calls, tmp_path):
    spec = make_spec(tmp_path, services=False)
    S = str(tmp_path / "stack")
    register_ready(calls)
    for argv in [
        ["mkdir", "-p", S + "/tables/data", S + "/tables/conf", S + "/tables/logs"],
        ["chown", "%d:%d" % (OWNER, OWNER), S + "/tables/data", S + "/tables/conf",
         S + "/tables/logs"],
        ["mkdir", "-p", S + "/drive/data", S + "/drive/conf", S + "/drive/logs"],
        ["chown", "%d:%d" % (OWNER, OWNER), S + "/drive/data", S + "/drive/conf",
         S + "/drive/logs"],
        ["mkdir", "-p", S + "/cache/data", S + "/cache/conf", S + "/cache/logs"],
        ["chown", "%d:%d" % (OWNER, OWNER), S + "/cache/data", S + "/cache/conf",
         S + "/cache/logs"],
        ["lxc", "init", "botlxc/debian-12", "acme-tables", "-c", "security.privileged=false",
         "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=tables",
         "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S],
        ["lxc", "config", "device", "add", "acme-tables", "data", "disk",
         "source=" + S + "/tables/data", "path=/opt/gbo/data"],
        ["lxc", "config", "device", "add", "acme-tables", "conf", "disk",
         "source=" + S + "/tables/conf", "path=/opt/gbo/conf"],
        ["lxc", "config", "device", "add", "acme-tables", "logs", "disk",
         "source=" + S + "/tables/logs", "path=/opt/gbo/logs"],
        ["lxc", "config", "device", "add", "acme-tables", "port-5432", "proxy",
         "listen=tcp:127.0.0.1:5432", "connect=tcp:127.0.0.1:5432"],
        ["lxc", "start", "acme-tables"],
        ["lxc", "exec", "acme-tables", "--", "systemctl", "is-system-running", "--wait"],
    ]:
        calls(argv)
    calls(["lxc", "exec", "acme-tables", "--", *botlxc.NETWORK_WAIT])
    for argv in [
        ["lxc", "init", "botlxc/debian-12", "acme-drive", "-c", "security.privileged=false",
         "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=drive",
         "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S,
         "-c", "user.botlxc.engine=rclone"],
        ["lxc", "config", "device", "add", "acme-drive", "data", "disk",
         "source=" + S + "/drive/data", "path=/opt/gbo/data"],
        ["lxc", "config", "device", "add", "acme-drive", "conf", "disk",
         "source=" + S + "/drive/conf", "path=/opt/gbo/conf"],
        ["lxc", "config", "device", "add", "acme-drive", "logs", "disk",
         "source=" + S + "/drive/logs", "path=/opt/gbo/logs"],
        ["lxc", "config", "device", "add", "acme-drive", "port-9000", "proxy",
         "listen=tcp:127.0.0.1:9000", "connect=tcp:127.0.0.1:9000"],
        ["lxc", "start", "acme-drive"],
        ["lxc", "exec", "acme-drive", "--", "systemctl", "is-system-running", "--wait"],
    ]:
        calls(argv)
    calls(["lxc", "exec", "acme-drive", "--", *botlxc.NETWORK_WAIT])
    for argv in [
        ["lxc", "init", "botlxc/debian-12", "acme-cache", "-c", "security.privileged=false",
         "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=cache",
         "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S],
        ["lxc", "config", "device", "add", "acme-cache", "data", "disk",
         "source=" + S + "/cache/data", "path=/opt/gbo/data"],
        ["lxc", "config", "device", "add", "acme-cache", "conf", "disk",
         "source=" + S + "/cache/conf", "path=/opt/gbo/conf"],
        ["lxc", "config", "device", "add", "acme-cache", "logs", "disk",
         "source=" + S + "/cache/logs", "path=/opt/gbo/logs"],
        ["lxc", "config", "device", "add", "acme-cache", "port-6379", "proxy",
         "listen=tcp:127.0.0.1:6379", "connect=tcp:127.0.0.1:6379"],
        ["lxc", "start", "acme-cache"],
        ["lxc", "exec", "acme-cache", "--", "systemctl", "is-system-running", "--wait"],
    ]:
        calls(argv)
    calls(["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT])

    ports, failures = botlxc.up(botlxc.Runner(), spec)

    assert failures == {}
    assert ports == DEFAULT_PORTS
    assert calls.made() == calls.expected
    assert not (tmp_path / "stack" / ".env").exists()  # containers only: no secrets


def pushes(name, component):
    """`lxc file push` of each rendered file (the catalogue decides which files exist)."""
    return [["lxc", "file", "push", "-", name + dest, "--create-dirs", "--mode", mode]
            for _template, dest, mode in botlxc.COMPONENTS[component].files]


def register_new_tenant(calls, spec, ca_file=None, dirs=True):
    """A real `up` of a new tenant with services, in world 'ready', registered in order."""
    S, owner = str(spec.stack), spec.host.subuid_base
    register_ready(calls)
    for component in spec.components if dirs else ():
        calls(["mkdir", "-p"] + ["%s/%s/%s" % (S, component, d) for d in ("data", "conf",
                                                                            "logs")])
        calls(["chown", "%d:%d" % (owner, owner)] + ["%s/%s/%s" % (S, component, d)
                                                     for d in ("data", "conf", "logs")])
    for component, port, engine in (("tables", 5432, []),
                                    ("drive", 9000, ["-c", "user.botlxc.engine=rclone"]),
                                    ("cache", 6379, [])):
        name = "acme-" + component
        calls(["lxc", "init", "botlxc/debian-12", name, "-c", "security.privileged=false",
               "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=" + component,
               "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S] + engine)
        for which in ("data", "conf", "logs"):
            calls(["lxc", "config", "device", "add", name, which, "disk",
                   "source=%s/%s/%s" % (S, component, which), "path=/opt/gbo/" + which])
        calls(["lxc", "config", "device", "add", name, "port-%d" % port, "proxy",
               "listen=tcp:127.0.0.1:%d" % port, "connect=tcp:127.0.0.1:%d" % port])
        calls(["lxc", "start", name])
        calls(["lxc", "exec", name, "--", "systemctl", "is-system-running", "--wait"])
        calls(["lxc", "exec", name, "--", *botlxc.NETWORK_WAIT])
        if ca_file:
            calls(["lxc", "file", "push", str(ca_file),
                   name + "/usr/local/share/ca-certificates/corp-proxy-root.crt",
                   "--create-dirs", "--mode", "0644"])
            calls(["lxc", "exec", name, "--", "update-ca-certificates"])
            calls(["lxc", "config", "set", name, "user.botlxc.host-ca",
                   botlxc.digest(ca_file.read_bytes())])
        for argv in pushes(name, component):
            calls(argv)
        calls(["lxc", "exec", name, "--", "sh", "/usr/local/lib/botlxc/install.sh"])
        calls(["lxc", "config", "set", name, "user.botlxc.installed",
               installed_label(spec, component)])
        calls(["lxc", "exec", name, "--", "sh", "/usr/local/lib/botlxc/health.sh"],
              stdout=component + ": ok\n")


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


@pytest.mark.parametrize("world", ["nothing", "down"])
def test_plan_on_a_host_without_a_running_lxd(calls, tmp_path, world):
    """`up --dry-run` works before LXD runs: it plans bootstrap, image build and tenant."""
    spec = make_spec(tmp_path, host=world_facts(world))
    register_host(calls, world)
    register_routes(calls)
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
    assert plan[imported + 2][:3] == ["mkdir", "-p", str(tmp_path / "stack/tables/data")]
    inits = [i for i, argv in enumerate(plan) if argv[:2] == ["lxc", "init"]]
    assert [plan[i][:4] for i in inits] == [["lxc", "init", "botlxc/debian-12", "acme-" + c]
                                            for c in ("tables", "drive", "cache")]
    assert inits[0] > imported


def test_minio_engine_pushes_the_checked_binary_before_the_install(calls, tmp_path):
    binary = tmp_path / "minio"
    binary.write_bytes(b"\x7fELF minio")
    sha = botlxc.file_sha256(binary)
    spec = make_spec(tmp_path, components=("drive",), engine="minio",
                     artifacts={"minio": (binary, sha)})
    register_ready(calls)
    runner = botlxc.Runner(dry_run=True)
    ports, failures = botlxc.up(runner, spec)
    assert failures == {} and calls.made() == calls.expected
    assert ports == {("drive", "s3"): 9000, ("drive", "console"): 9001}
    plan = argvs(runner)
    (init,) = [argv for argv in plan if argv[:2] == ["lxc", "init"]]
    assert init[-2:] == ["-c", "user.botlxc.engine=minio"]
    assert ["lxc", "config", "device", "add", "acme-drive", "port-9001", "proxy",
            "listen=tcp:127.0.0.1:9001", "connect=tcp:127.0.0.1:9001"] in plan
    install = plan.index(["lxc", "exec", "acme-drive", "--", "sh",
                          "/usr/local/lib/botlxc/install.sh"])
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
        return make_spec(tmp_path, components=("drive",), engine="minio",
                         artifacts={"minio": (binary, botlxc.file_sha256(binary))})

    world = up_world(spec_with(old))  # installed with the old binary
    install = ["lxc", "exec", "acme-drive", "--", "sh", "/usr/local/lib/botlxc/install.sh"]
    register_ready(calls, world)
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
    spec = make_spec(tmp_path, host=facts(ca_files=(ca_file,),
                                          listening=frozenset({5432, 9000, 6379, 22})))
    register_ready(calls, up_world(spec) + other_tenant({"tables": 5433}))
    health_reads(calls, spec)
    runner = botlxc.Runner()

    ports, failures = botlxc.up(runner, spec)

    assert runner.actions == []
    assert calls.made() == calls.expected  # only reads: host, image, list, health
    assert (failures, ports) == ({}, DEFAULT_PORTS)


def test_tenant_already_up_dry_run_plans_nothing(calls, tmp_path, ca_file):
    spec = make_spec(tmp_path, host=facts(ca_files=(ca_file,)))
    register_ready(calls, up_world(spec))
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    assert calls.made() == calls.expected == HOST_READS
    assert runner.script() == ("#!/usr/bin/env bash\n# botlxc %s runbook: the changes botlxc "
                               "would make, in order.\nset -eu\n" % V)


def test_stopped_instance_is_started_not_recreated(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec)
    world[2] = tenant_instance(spec, "cache", status="Stopped")
    register_ready(calls, world)
    health_reads(calls, spec, ["tables", "drive"])
    calls(["lxc", "start", "acme-cache"])
    calls(["lxc", "exec", "acme-cache", "--", "systemctl", "is-system-running", "--wait"])
    calls(["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT])
    health_reads(calls, spec, ["cache"])
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert calls.made() == calls.expected
    assert argvs(runner) == [["lxc", "start", "acme-cache"],
                             ["lxc", "exec", "acme-cache", "--", "systemctl",
                              "is-system-running", "--wait"],
                             ["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT]]


def test_degraded_boot_counts_and_a_missing_lease_names_the_step(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False)
    register_ready(calls)
    calls(["mkdir", "-p"] + [str(tmp_path / "stack/cache" / d) for d in ("data", "conf",
                                                                         "logs")])
    calls(["chown", "%d:%d" % (OWNER, OWNER)] + [str(tmp_path / "stack/cache" / d)
                                                 for d in ("data", "conf", "logs")])
    calls(["lxc", "init", "botlxc/debian-12", "acme-cache", "-c", "security.privileged=false",
           "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=cache",
           "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=%s/stack" % tmp_path])
    for which in ("data", "conf", "logs"):
        calls(["lxc", "config", "device", "add", "acme-cache", which, "disk",
               "source=%s/stack/cache/%s" % (tmp_path, which), "path=/opt/gbo/" + which])
    calls(["lxc", "config", "device", "add", "acme-cache", "port-6379", "proxy",
           "listen=tcp:127.0.0.1:6379", "connect=tcp:127.0.0.1:6379"])
    calls(["lxc", "start", "acme-cache"])
    calls(["lxc", "exec", "acme-cache", "--", "systemctl", "is-system-running", "--wait"],
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
    calls(["chown", "%d:%d" % (OWNER, OWNER), str(tmp_path / "stack/cache/logs")])
    health_reads(calls, spec)
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
    assert argvs(runner)[:3] == [
        ["mkdir", "-p", S + "/cache/data", S + "/cache/conf", S + "/cache/logs"],
        ["chown", "0:0", S + "/cache/data", S + "/cache/conf", S + "/cache/logs"],
        ["lxc", "init", "botlxc/debian-12", "acme-cache", "-c", "security.privileged=true",
         "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=cache",
         "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S]]


def test_idmap_base_comes_from_the_instance_else_from_the_host():
    spec = make_spec(botlxc.Path("/srv"), host=facts(subuid_base=165536))
    assert botlxc.idmap_base(None, spec) == 165536
    assert botlxc.idmap_base(instance("a", {}, {}), spec) == OWNER
    assert botlxc.idmap_base(instance("a", {"security.privileged": "true"}, {}), spec) == 0
    bare = instance("a", {}, {})
    for key in ("volatile.idmap.current", "volatile.idmap.next", "volatile.last_state.idmap"):
        del bare["config"][key]
    assert botlxc.idmap_base(bare, spec) == 165536


# ----------------------------------------------------------------------------- ports


def test_taken_ports_move_to_the_next_free_one(calls, tmp_path, capsys):
    """5432 and 9000 have host listeners; tenant beta forwards 5433 and 6379."""
    spec = make_spec(tmp_path, services=False, host=facts(listening=frozenset({5432, 9000})))
    register_ready(calls, other_tenant({"tables": 5433, "cache": 6379}))
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
    spec = make_spec(tmp_path, components=("drive",), engine="minio")
    snapshot = {"all": [], "mine": {}}
    assert botlxc.allocate_ports(spec, snapshot, {9000}) == {("drive", "s3"): 9001,
                                                             ("drive", "console"): 9002}


def test_picked_port_that_is_taken_is_refused_before_any_change(calls, tmp_path):
    spec = make_spec(tmp_path, port_picks={("tables", "pg"): 5433})
    register_ready(calls, other_tenant({"tables": 5433}))
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput) as failed:
        botlxc.up(runner, spec)
    assert str(failed.value) == "port 5433 for tables.pg is already in use on this host"
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
    ports = botlxc.allocate_ports(spec, {"all": [], "mine": {}}, frozenset())
    assert ports[("cache", "valkey")] == 5432
    assert ports[("tables", "pg")] == 5433


def test_remapping_a_port_of_a_running_tenant(calls, tmp_path):
    spec = make_spec(tmp_path, port_picks={("tables", "pg"): 15432})
    register_ready(calls, up_world(spec))
    calls(["lxc", "config", "device", "add", "acme-tables", "port-15432", "proxy",
           "listen=tcp:127.0.0.1:15432", "connect=tcp:127.0.0.1:5432"])
    calls(["lxc", "config", "device", "remove", "acme-tables", "port-5432"])
    health_reads(calls, spec)
    runner = botlxc.Runner()
    ports, failures = botlxc.up(runner, spec)
    assert failures == {}
    assert calls.made() == calls.expected  # no reinstall: the service inside is unchanged
    assert [a.argv[:2] for a in runner.actions if a.in_process] == [["botlxc", "secrets"]]
    assert (tmp_path / "stack/.env").read_text() == env_text(ports={("tables", "pg"): 15432})


# ----------------------------------------------------------------------------- refusals


def test_switching_the_drive_engine_in_place_is_refused(calls, tmp_path):
    spec = make_spec(tmp_path, services=False)
    world = up_world(make_spec(tmp_path, services=False, engine="minio"), installed=False)
    register_ready(calls, world)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput, match="runs drive engine minio"):
        botlxc.up(runner, spec)
    assert runner.actions == [] and calls.made() == calls.expected


def test_an_unlabelled_instance_with_the_tenants_name_is_never_taken_over(calls, tmp_path):
    spec = make_spec(tmp_path, services=False)
    stranger = instance("acme-cache", {"user.owner": "someone else"}, {})
    register_ready(calls, [stranger])
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput, match="acme-cache exists but botlxc does not manage"):
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
    ports, failures = botlxc.up(runner, spec)
    assert list(failures) == ["cache"]
    assert str(failures["cache"]).startswith(
        "acme-cache: device data points at /srv/old-cache-data, expected %s/stack/cache/data"
        % tmp_path)
    assert runner.actions == [] and calls.made() == calls.expected


def test_one_failing_component_does_not_stop_the_others(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables", "cache"))
    world = up_world(spec)
    world[1]["config"]["user.botlxc.installed"] = "0000000000000000"  # cache needs install
    register_ready(calls, world)
    health_reads(calls, spec, ["tables"])
    for argv in pushes("acme-cache", "cache"):
        calls(argv)
    for _ in range(3):  # the install is retried (mirror hiccups), then the real error shows
        calls(["lxc", "exec", "acme-cache", "--", "sh", "/usr/local/lib/botlxc/install.sh"],
              returncode=100, stderr="E: Unable to locate package valkey-server\n")
    runner = botlxc.Runner()
    ports, failures = botlxc.up(runner, spec)
    assert calls.made() == calls.expected
    assert list(failures) == ["cache"]
    assert isinstance(failures["cache"], botlxc.CommandFailed)
    assert str(failures["cache"]) == (
        "acme-cache: install: command failed (exit 100): lxc exec acme-cache -- sh "
        "/usr/local/lib/botlxc/install.sh -- E: Unable to locate package valkey-server")


def test_components_run_concurrently_each_in_its_own_order(calls, tmp_path):
    spec = make_spec(tmp_path, services=False, jobs=3)
    S = str(tmp_path / "stack")
    register_ready(calls)
    per_component = {}
    for component in spec.components:
        calls(["mkdir", "-p"] + ["%s/%s/%s" % (S, component, d) for d in ("data", "conf",
                                                                            "logs")])
        calls(["chown", "%d:%d" % (OWNER, OWNER)] + ["%s/%s/%s" % (S, component, d)
                                                     for d in ("data", "conf", "logs")])
    for component, port in (("tables", 5432), ("drive", 9000), ("cache", 6379)):
        name = "acme-" + component
        engine = ["-c", "user.botlxc.engine=rclone"] if component == "drive" else []
        sequence = [["lxc", "init", "botlxc/debian-12", name, "-c", "security.privileged=false",
                     "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=" + component,
                     "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S] + engine]
        sequence += [["lxc", "config", "device", "add", name, which, "disk",
                      "source=%s/%s/%s" % (S, component, which), "path=/opt/gbo/" + which]
                     for which in ("data", "conf", "logs")]
        sequence += [["lxc", "config", "device", "add", name, "port-%d" % port, "proxy",
                      "listen=tcp:127.0.0.1:%d" % port, "connect=tcp:127.0.0.1:%d" % port],
                     ["lxc", "start", name],
                     ["lxc", "exec", name, "--", "systemctl", "is-system-running", "--wait"]]
        for argv in sequence:
            calls(argv)
        calls(["lxc", "exec", name, "--", *botlxc.NETWORK_WAIT])
        per_component[name] = sequence + [["lxc", "exec", name, "--", *botlxc.NETWORK_WAIT]]
    assert botlxc.up(botlxc.Runner(), spec)[1] == {}
    made = calls.made()
    assert sorted(made) == sorted(calls.expected)
    assert made[:len(HOST_READS) + 6] == calls.expected[:len(HOST_READS) + 6]
    for name, sequence in per_component.items():
        assert [argv for argv in made if name in argv] == sequence


# ----------------------------------------------------------------------------- secrets


def secret_values(stack):
    values = []
    for component in botlxc.DEFAULT_COMPONENTS:
        values += botlxc.read_env_file(stack / component / "conf" / "secrets.env").values()
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
    for component, keys in (("tables", ["TABLES_PASSWORD"]),
                            ("drive", ["DRIVE_ACCESSKEY", "DRIVE_SECRET"]),
                            ("cache", ["CACHE_PASSWORD"])):
        path = stack / component / "conf" / "secrets.env"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        found = botlxc.read_env_file(path)
        assert list(found) == keys
        for key, value in found.items():
            assert re.fullmatch(r"[A-Za-z0-9]{%d}" % (20 if key == "DRIVE_ACCESSKEY" else 32),
                                value), key
        if botlxc.os.geteuid() == 0:  # owned by the container's root, which reads it
            assert (path.stat().st_uid, path.stat().st_gid) == (OWNER, OWNER)
    env = stack / ".env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    s = {k: v for c in botlxc.DEFAULT_COMPONENTS
         for k, v in botlxc.read_env_file(stack / c / "conf" / "secrets.env").items()}
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
    runner = new_tenant_real_run(calls, spec, dirs=False)
    after = {p: p.read_text() for p in (tmp_path / "stack").rglob("*") if p.is_file()}
    assert after == before
    assert sorted(secret_values(tmp_path / "stack")) == sorted(
        v for c in SECRETS.values() for v in c.values())
    for value in secret_values(tmp_path / "stack"):
        assert value not in runner.script()
        assert not any(value in " ".join(argv) for argv in calls.made())


def test_env_readable_by_others_is_made_private_again(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec)
    env = tmp_path / "stack" / ".env"
    env.chmod(0o644)
    register_ready(calls, world)
    health_reads(calls, spec)
    runner = botlxc.Runner()
    botlxc.up(runner, spec)
    assert calls.made() == calls.expected
    assert [a.argv[:2] for a in runner.actions] == [["botlxc", "secrets"]]
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    assert env.read_text() == env_text()


def test_partial_up_keeps_the_other_components_in_env(calls, tmp_path):
    """`up -c cache` on a tenant that is up must not drop DATABASE_URL from .env."""
    full = make_spec(tmp_path)
    world = up_world(full)
    spec = make_spec(tmp_path, components=("cache",))
    register_ready(calls, world)
    health_reads(calls, spec)
    runner = botlxc.Runner()
    botlxc.up(runner, spec)
    assert (tmp_path / "stack" / ".env").read_text() == env_text()
    assert runner.actions == []


# ----------------------------------------------------------------------------- down


def test_down_deletes_only_the_tenants_labelled_instances(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = other_tenant({"tables": 5433}) + up_world(spec, installed=False)
    # an unlabelled instance that happens to be called like ours is not ours
    world.append(instance("acme-llm", {}, {}))
    calls(LIST, data=world)
    for component in ("tables", "drive", "cache"):
        calls(["lxc", "delete", "acme-" + component, "--force"])
    runner = botlxc.Runner()
    removed = botlxc.down(runner, "acme", ())
    assert calls.made() == calls.expected
    assert removed == [("acme-" + c, str(tmp_path / "stack")) for c in ("tables", "drive",
                                                                        "cache")]
    # the data stays on the host, untouched
    assert (tmp_path / "stack" / ".env").read_text() == env_text()
    assert (tmp_path / "stack" / "tables" / "data").is_dir()


def test_down_one_component_and_an_absent_tenant(calls, tmp_path):
    spec = make_spec(tmp_path)
    calls(LIST, data=up_world(spec, installed=False))
    calls(["lxc", "delete", "acme-cache", "--force"])
    calls(LIST, data=[])
    runner = botlxc.Runner()
    assert botlxc.down(runner, "acme", ("cache",)) == [("acme-cache", str(tmp_path / "stack"))]
    assert botlxc.down(runner, "acme", ()) == []
    assert calls.made() == calls.expected
    assert argvs(runner) == [["lxc", "delete", "acme-cache", "--force"]]


@pytest.mark.parametrize("listen, host", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
                                          ("10.9.8.7", "10.9.8.7"), ("::", "127.0.0.1"),
                                          ("::1", "[::1]")])
def test_env_points_where_the_ports_listen(listen, host, tmp_path):
    spec = make_spec(tmp_path, listen=listen)
    text = botlxc.stack_env(spec, dict(DEFAULT_PORTS), SECRETS)
    assert "DRIVE_SERVER=http://%s:9000\n" % host in text
    assert "@%s:5432/botserver\n" % host in text
    assert "@%s:6379\n" % host in text


def test_a_second_run_on_a_locked_tenant_fails_clearly(tmp_path):
    with botlxc.tenant_lock("locktest"):
        with pytest.raises(botlxc.BotlxcError, match="still locked by another botlxc run"):
            with botlxc.tenant_lock("locktest", wait=0):
                pass
    with botlxc.tenant_lock("locktest", wait=0):  # released: free again
        pass


def test_up_as_a_normal_user_is_one_clear_line_before_any_command(calls, tmp_path):
    spec = make_spec(tmp_path, host=facts(root=False))
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BotlxcError, match="botlxc up needs root") as failed:
        botlxc.up(runner, spec)
    assert failed.value.exit_code == 1
    assert runner.actions == [] and calls.made() == []


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
