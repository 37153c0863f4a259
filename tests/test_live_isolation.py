"""Live: tenants that cannot see each other (issue 8), on the real LXD.

Two tenants on networks of their own: a TCP connect from tenant A's container to a listener
in tenant B's fails, inside a tenant it succeeds, and both still reach their package mirror.
Every container has ids of its own. Traffic goes only to the project's own containers.
"""
import json
import subprocess

import pytest

from test_live import botlxc, cleanup, instances, lxc, make_tenant, real_lxd  # noqa: F401

pytestmark = pytest.mark.live

#: A one-connection-at-a-time TCP server on every address of the container, port 7777.
LISTEN = ("use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0:7777', "
          "Listen => 5, ReuseAddr => 1) or die; while (my $c = $s->accept) { print $c "
          "qq(hello\\n); close $c }")
#: Exit 0 when a TCP connect to ARGV[0] succeeds within 5 s.
CONNECT = "use IO::Socket::INET; IO::Socket::INET->new(PeerAddr => $ARGV[0], Timeout => 5) " \
          "or exit 1"


def address(name):
    inst = json.loads(lxc("list", name, "--format", "json").stdout)[0]
    nets = inst["state"]["network"]
    return next(a["address"] for nic, net in nets.items() if nic != "lo"
                for a in net["addresses"] if a["family"] == "inet")


def connects(source, target):
    return lxc("exec", source, "--", "perl", "-e", CONNECT, target, check=False).returncode == 0


@pytest.fixture(scope="module")
def two_tenants(tmp_path_factory):
    a, a_stack = make_tenant(tmp_path_factory, "isa")
    b, b_stack = make_tenant(tmp_path_factory, "isb")
    try:
        botlxc("up", "-t", a, "--stack-dir", str(a_stack), "--containers-only",
               "-c", "tables", "-c", "cache")
        botlxc("up", "-t", b, "--stack-dir", str(b_stack), "--containers-only", "-c", "cache")
        servers = [subprocess.Popen(["lxc", "exec", name, "--", "perl", "-e", LISTEN])
                   for name in (a + "-cache", b + "-cache")]
        yield a, b, a_stack
    finally:
        for server in locals().get("servers", []):
            server.kill()
        cleanup(a)
        cleanup(b)


def test_a_tenant_reaches_its_own_containers_not_another_tenants(two_tenants):
    a, b, _ = two_tenants
    lxc("exec", a + "-cache", "--", "sh", "-c", "sleep 1")  # the listeners are up by now
    assert connects(a + "-tables", address(a + "-cache") + ":7777")   # same tenant: open
    assert not connects(a + "-tables", address(b + "-cache") + ":7777")  # A -> B: walled
    assert not connects(b + "-cache", address(a + "-cache") + ":7777")   # B -> A: walled


def test_both_tenants_still_reach_their_mirror(two_tenants):
    a, b, _ = two_tenants
    for name in (a + "-cache", b + "-cache"):
        proc = lxc("exec", name, "--", "apt-get", "-q", "update", check=False)
        assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr[-500:]


def test_each_container_has_ids_of_its_own(two_tenants):
    a, b, a_stack = two_tenants
    bases = {}
    for name in (a + "-tables", a + "-cache", b + "-cache"):
        config = instances(name.rsplit("-", 1)[0])[name]["config"]
        assert config["security.idmap.isolated"] == "true"
        bases[name] = int(config["security.idmap.base"])
        idmap = json.loads(config["volatile.idmap.current"])
        assert {e["Hostid"] for e in idmap} == {bases[name]}
    assert len(set(bases.values())) == 3
    shown = lxc("config", "show", a + "-cache").stdout  # as an operator would look
    assert 'security.idmap.isolated: "true"' in shown
    assert 'security.privileged: "false"' in shown
    # a file the container's root writes is owned by that container's own base on the host
    lxc("exec", a + "-cache", "--", "sh", "-c", "echo x > /opt/gbo/data/mine")
    assert (a_stack / "cache/data/mine").stat().st_uid == bases[a + "-cache"]


def test_status_and_info_show_the_network(two_tenants):
    a, _, _ = two_tenants
    rows = json.loads(botlxc("status", "-t", a, "--json").stdout)
    networks = {row["network"] for row in rows}
    assert len(networks) == 1 and networks != {"lxdbr0"}
    assert "walled off by ACL botlxc-" + a in botlxc("status", "-t", a).stdout
    info = json.loads(botlxc("info", "cache", "-t", a, "--json").stdout)
    assert info["devices"]["eth0"]["network"] == networks.pop()


def test_destroy_removes_the_network_and_its_firewall_rules(tmp_path_factory):
    name, stack = make_tenant(tmp_path_factory, "isc")
    try:
        botlxc("up", "-t", name, "--stack-dir", str(stack), "--containers-only", "-c", "cache")
        network = json.loads(botlxc("status", "-t", name, "--json").stdout)[0]["network"]
        botlxc("destroy", "-t", name)
        assert network not in lxc("network", "list", "--format", "csv").stdout
        assert ("botlxc-" + name) not in lxc("network", "acl", "list", "--format", "csv").stdout
        for tool in ("iptables-save", "ip6tables-save"):
            rules = subprocess.run([tool], capture_output=True, text=True).stdout
            assert "LXD network %s\"" % network not in rules
        assert (stack / "cache" / "data").is_dir()  # destroy without --purge-data keeps it
    finally:
        cleanup(name)
