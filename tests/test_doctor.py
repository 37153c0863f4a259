"""doctor at the seam: each trouble named with its evidence and its fix, and --fix applying
the safe one (one at a time, then checking again)."""
import botlxc
from conftest import (BRIDGE_NET, DAEMON_DOWN, HOST_NIC, IMAGE_LIST, LIST, LOCAL_IMAGE, POOLS,
                      PROFILE, QUERY_NETWORKS, QUERY_POOLS, QUERY_PROFILE, QUERY_SERVER,
                      SERVER, SS, facts, make_spec, ss_output, up_world)

NET = botlxc.tenant_network("acme")
RESOURCES = ["lxc", "query", "/1.0/storage-pools/default/resources"]
ACLS = ["lxc", "query", "/1.0/network-acls?recursion=1"]


def host_ok(calls, networks=()):
    calls(QUERY_SERVER, data=SERVER)
    calls(QUERY_SERVER, data=SERVER)
    calls(QUERY_POOLS, data=POOLS)
    calls(QUERY_NETWORKS, data=[HOST_NIC, BRIDGE_NET, *networks])
    calls(QUERY_PROFILE, data=PROFILE)
    calls(RESOURCES, data={"space": {"used": 2 << 30, "total": 30 << 30}})
    calls(IMAGE_LIST, data=LOCAL_IMAGE)


def isolated(world):
    for inst in world:
        inst["devices"]["eth0"] = {"type": "nic", "network": NET, "name": "eth0"}
        inst["expanded_devices"]["eth0"] = inst["devices"]["eth0"]
    return world


def mirror_reached(calls, name):
    calls(["lxc", "exec", name, "--", "getent", "hosts", "mirror.example.org"],
          stdout="203.0.113.80 mirror.example.org\n")
    calls(["lxc", "exec", name, "--", "timeout", "10", "perl", "-MIO::Socket::INET", "-e",
           "IO::Socket::INET->new(PeerAddr => $ARGV[0], Timeout => 8) or exit 1",
           "mirror.example.org:80"])


def container_ok(calls, name, component):
    mirror_reached(calls, name)
    calls(["lxc", "exec", name, "--", "sh", "/usr/local/lib/botlxc/health.sh"],
          stdout=component + ": ok\n")


def op(calls, world):
    calls(LIST, data=world)
    return botlxc.Op("acme", botlxc.Runner(), facts(sysctls={}))


def isolated_cache_tenant(calls, tmp_path, holder=("lxd", 300), status="Running"):
    """Tenant acme with a cache on its own network, LXD fine; the reads up to its ports'
    holders and the network rules. Returns the Op."""
    spec = make_spec(tmp_path, components=("cache",))
    world = isolated(up_world(spec))
    world[0]["status"] = status
    host_ok(calls, [{"name": NET, "config": {"security.acls": "botlxc-acme"}}])
    the_op = op(calls, world)
    calls(SS, stdout=ss_output({6379: holder}))
    calls(ACLS, data=[{"name": "botlxc-acme"}])
    return the_op


def test_a_healthy_tenant_is_all_ok(calls, tmp_path):
    the_op = isolated_cache_tenant(calls, tmp_path)
    container_ok(calls, "acme-cache", "cache")
    checks = botlxc.doctor(the_op)
    assert calls.made() == calls.expected
    assert [(c.name, c.status) for c in checks] == [
        ("lxd-installed", "ok"), ("lxd-running", "ok"), ("lxd-initialised", "ok"),
        ("subids", "ok"), ("host-limits", "ok"), ("storage-default", "ok"), ("image", "ok"),
        ("stack", "ok"), ("port-cache.valkey", "ok"), ("isolation", "ok"),
        ("acme-cache-address", "ok"), ("acme-cache-mirror", "ok"), ("acme-cache-service", "ok")]


def test_lxd_down_is_a_failure_whose_fix_starts_it(calls):
    calls(QUERY_SERVER, stderr=DAEMON_DOWN, returncode=1)
    checks, world = botlxc.host_checks(botlxc.Runner(), facts())
    assert world is None
    (down,) = [c for c in checks if c.status == "fail"]
    assert down.name == "lxd-running" and "connection refused" in down.evidence
    assert down.fix == "start it: botlxc host setup (or systemctl start lxd)"
    runner = botlxc.Runner(dry_run=True)
    down.repair(runner)
    assert [a.argv[0] for a in runner.actions] == ["mkdir", "start-stop-daemon", "lxd"]


def test_no_permission_on_the_socket_says_how_to_get_it(calls):
    calls(QUERY_SERVER, returncode=1, stderr='Error: Get "http://unix.socket/1.0": dial unix '
          '/var/lib/lxd/unix.socket: connect: permission denied\n')
    checks, _ = botlxc.host_checks(botlxc.Runner(), facts(root=False))
    (denied,) = [c for c in checks if c.status == "fail"]
    assert denied.name == "lxd-permission" and "usermod -aG lxd" in denied.fix


def test_a_port_someone_else_holds_while_the_container_is_down(calls, tmp_path):
    the_op = isolated_cache_tenant(calls, tmp_path, ("redis-server", 4711), "Stopped")
    calls(["lxc", "info", "acme-cache", "--show-log"],
          stdout="lxc acme-cache 2026 ERROR    proxy - Failed to listen on 127.0.0.1:6379\n")
    checks = {c.name: c for c in botlxc.doctor(the_op)}
    port = checks["port-cache.valkey"]
    assert (port.status, port.evidence) == ("fail", "6379 is held by redis-server (pid 4711)")
    assert port.fix == "free it, or move the service: botlxc ports set cache.valkey=PORT -t acme"
    stopped = checks["acme-cache"]
    assert stopped.status == "fail" and "Failed to listen on 127.0.0.1:6379" in stopped.evidence


def test_an_unhealthy_service_shows_its_journal_and_is_restarted(calls, tmp_path):
    the_op = isolated_cache_tenant(calls, tmp_path)
    mirror_reached(calls, "acme-cache")
    calls(["lxc", "exec", "acme-cache", "--", "sh", "/usr/local/lib/botlxc/health.sh"],
          returncode=1, stdout="cache: PING got: Connection refused (cache.service inactive)\n")
    calls(["lxc", "exec", "acme-cache", "--", "journalctl", "-u", "cache.service", "-n", "5",
           "--no-pager", "-q"], stdout="Stopped cache.service - botlxc cache\n")
    checks = {c.name: c for c in botlxc.doctor(the_op)}
    service = checks["acme-cache-service"]
    assert service.status == "fail"
    assert service.evidence == ("cache: PING got: Connection refused (cache.service inactive)"
                                " -- journal: Stopped cache.service - botlxc cache")
    runner = botlxc.Runner(dry_run=True)
    service.repair(runner)
    assert [a.argv for a in runner.actions] == [
        ["lxc", "exec", "acme-cache", "--", "systemctl", "restart", "cache.service"],
        ["lxc", "exec", "acme-cache", "--", *botlxc.HEALTH_WAIT]]


def test_containers_on_the_shared_bridge_are_a_warning(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)  # eth0 from the profile: lxdbr0
    the_op = op(calls, world)
    checks = botlxc.isolation_checks(the_op, {"networks": [BRIDGE_NET]})
    assert [(c.name, c.status, c.evidence) for c in checks] == [
        ("isolation", "warn", "containers on lxdbr0, shared with other tenants")]
