"""A tenant's own network: a bridge and an LXD network ACL that wall it off from other
tenants, LANs and the host's services (DHCP/DNS on its bridge stay), made by `up` and removed
by `destroy`; `--shared-network` keeps the old shared bridge."""
import json

import botlxc
from conftest import (ADDRS, BRIDGE_NET, HOST_NIC, IMAGE_LIST, LIST, POOLS, PROFILE,
                      QUERY_NETWORKS, QUERY_POOLS, QUERY_PROFILE, QUERY_SERVER, ROUTES, SERVER,
                      SS, make_spec, ss_output, up_world)

NET = botlxc.tenant_network("acme")
ACL_QUERY = ["lxc", "query", "/1.0/network-acls?recursion=1"]
#: mirror.example.org (the fixtures' apt mirror) resolves into a private range: a LAN proxy
GETENT = ["getent", "ahostsv4", "mirror.example.org"]
MIRROR_ANSWER = "10.20.30.40    STREAM mirror.example.org\n10.20.30.40    DGRAM\n"
IP_ADDRS = ["ip", "-j", "-4", "addr"]
IP_ROUTES = ["ip", "-j", "-4", "route", "show", "table", "all"]


def acme_net(subnet="10.100.77.1/24"):
    return {"name": NET, "type": "bridge", "managed": True, "status": "Created",
            "config": {"ipv4.address": subnet, "ipv4.nat": "true", "ipv6.address": "none",
                       "security.acls": "botlxc-acme",
                       "security.acls.default.egress.action": "allow",
                       "security.acls.default.ingress.action": "allow",
                       "user.botlxc.tenant": "acme"}}


def register(calls, instances=(), networks=(), acls=()):
    calls(QUERY_SERVER, data=SERVER)
    calls(QUERY_POOLS, data=POOLS)
    calls(QUERY_NETWORKS, data=[HOST_NIC, BRIDGE_NET, *networks])
    calls(QUERY_PROFILE, data=PROFILE)
    calls(IMAGE_LIST, data=[{"aliases": [{"name": "botlxc/debian-12"}], "fingerprint": "f"}])
    calls(LIST, data=list(instances))
    calls(SS, stdout=ss_output({}))
    calls(ACL_QUERY, data=list(acls))
    calls(IP_ADDRS, data=ADDRS)
    calls(GETENT, stdout=MIRROR_ANSWER)


def expected_targets():
    """Private ranges and the host's address, less the mirror's address."""
    return ",".join(str(n) for n in sorted(
        list(botlxc.ipaddress.ip_network("10.0.0.0/8").address_exclude(
            botlxc.ipaddress.ip_network("10.20.30.40/32")))
        + [botlxc.ipaddress.ip_network(n) for n in (
            "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")]))


def test_the_rejected_ranges_keep_the_mirror_reachable():
    targets = expected_targets().split(",")
    assert "10.20.30.40/32" not in targets and "10.20.30.41/32" in targets
    assert "10.101.77.20/32" not in targets  # the host's address is inside 10/8 already
    assert "192.168.0.0/16" in targets and "169.254.0.0/16" in targets


def test_a_new_tenant_gets_its_own_bridge_and_acl(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False, isolated=True)
    register(calls)
    calls(IP_ROUTES, data=ROUTES)  # a free subnet for the bridge
    calls(IP_ADDRS, data=ADDRS)
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    assert calls.made() == calls.expected
    argvs = [a.argv for a in runner.actions]
    at = argvs.index(["lxc", "network", "acl", "create", "botlxc-acme"])
    assert argvs[at + 1] == ["lxc", "network", "acl", "edit", "botlxc-acme"]
    document = json.loads(runner.actions[at + 1].input)
    assert [(r["action"], r["destination"]) for r in document["egress"]] == [
        ("reject", expected_targets())]
    assert [(r["action"], r["source"]) for r in document["ingress"]] == [
        ("reject", expected_targets())]
    assert document["config"] == {"user.botlxc.tenant": "acme"}
    # 10.100.0.0/16 is routed, 10.101.77.0/24 the host LAN, 10.101.177.0/24 lxdbr0
    assert argvs[at + 2] == [
        "lxc", "network", "create", NET, "--type=bridge", "ipv4.address=10.102.77.1/24",
        "ipv4.nat=true", "ipv6.address=none", "security.acls=botlxc-acme",
        "security.acls.default.egress.action=allow", "security.acls.default.ingress.action=allow",
        "user.botlxc.tenant=acme"]
    assert ["lxc", "config", "device", "add", "acme-cache", "eth0", "nic", "network=" + NET,
            "name=eth0"] in argvs


def isolated_world(spec):
    world = up_world(spec)
    for inst in world:
        inst["devices"]["eth0"] = {"type": "nic", "network": NET, "name": "eth0"}
    return world


def test_an_isolated_tenant_that_is_up_changes_nothing(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False, isolated=True)
    acl = botlxc.acl_document("acme", expected_targets())
    register(calls, isolated_world(spec), [acme_net()], [dict(acl, name="botlxc-acme")])
    runner = botlxc.Runner()
    botlxc.up(runner, spec)
    assert runner.actions == [] and calls.made() == calls.expected


def test_a_tenant_on_the_shared_bridge_moves_to_its_own_while_stopped(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False, isolated=True)
    acl = botlxc.acl_document("acme", expected_targets())
    register(calls, up_world(spec), [acme_net()], [dict(acl, name="botlxc-acme")])
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    assert [a.argv for a in runner.actions] == [
        ["lxc", "stop", "acme-cache", "--timeout", "120"],
        ["lxc", "config", "device", "add", "acme-cache", "eth0", "nic", "network=" + NET,
         "name=eth0"],
        ["lxc", "start", "acme-cache"],
        ["lxc", "exec", "acme-cache", "--", *botlxc.BOOT_WAIT],
        ["lxc", "exec", "acme-cache", "--", *botlxc.NETWORK_WAIT]]


def test_changed_rules_are_rewritten(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False, isolated=True)
    stale = dict(botlxc.acl_document("acme", "10.0.0.0/8"), name="botlxc-acme")
    register(calls, isolated_world(spec), [acme_net()], [stale])
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    assert [a.argv for a in runner.actions] == [["lxc", "network", "acl", "edit",
                                                 "botlxc-acme"]]


def test_shared_network_puts_an_isolated_tenant_back_on_the_shared_bridge(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False, isolated=False)
    calls(QUERY_SERVER, data=SERVER)
    calls(QUERY_POOLS, data=POOLS)
    calls(QUERY_NETWORKS, data=[HOST_NIC, BRIDGE_NET, acme_net()])
    calls(QUERY_PROFILE, data=PROFILE)
    calls(IMAGE_LIST, data=[{"aliases": [{"name": "botlxc/debian-12"}], "fingerprint": "f"}])
    calls(LIST, data=isolated_world(spec))
    calls(SS, stdout=ss_output({}))
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    assert [a.argv for a in runner.actions][:2] == [
        ["lxc", "stop", "acme-cache", "--timeout", "120"],
        ["lxc", "config", "device", "remove", "acme-cache", "eth0"]]


def test_destroy_removes_the_network_its_firewall_rules_and_the_acl(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False)
    world = isolated_world(spec)
    calls(LIST, data=world)
    op = botlxc.Op("acme", botlxc.Runner(), botlxc.HostFacts(systemd=False))
    mark = '-m comment --comment "generated for LXD network %s"' % NET
    calls(["lxc", "stop", "acme-cache", "--timeout", "120"])
    calls(["lxc", "config", "unset", "acme-cache", "security.protection.delete"])
    calls(["lxc", "delete", "acme-cache"])
    foreign = dict(acme_net(), name="bxforeign", config={})
    calls(QUERY_NETWORKS, data=[BRIDGE_NET, acme_net(), foreign])
    calls(ACL_QUERY, data=[dict(botlxc.acl_document("acme", "10.0.0.0/8"), name="botlxc-acme")])
    calls(["iptables-save", "-t", "filter"], stdout="*filter\n-A INPUT -i %s %s -j lxd_acl_%s\n"
          "-A INPUT -i %s -p udp %s -j ACCEPT\n-A INPUT -i lxdbr0 -j ACCEPT\nCOMMIT\n"
          % (NET, mark, NET, NET, mark))
    calls(["iptables", "-t", "filter", "-D", "INPUT", "-i", NET, "-m", "comment", "--comment",
           "generated for LXD network " + NET, "-j", "lxd_acl_" + NET])
    calls(["ip6tables-save", "-t", "filter"], stdout="")
    calls(["lxc", "network", "unset", NET, "security.acls"])
    calls(["lxc", "network", "delete", NET])
    calls(["iptables-save", "-t", "filter"], stdout="-A INPUT -i %s -p udp %s -j ACCEPT\n"
          % (NET, mark))
    calls(["iptables", "-t", "filter", "-D", "INPUT", "-i", NET, "-p", "udp", "-m", "comment",
           "--comment", "generated for LXD network " + NET, "-j", "ACCEPT"])
    for tool, table in (("iptables", "nat"), ("iptables", "mangle"), ("ip6tables", "filter"),
                        ("ip6tables", "nat"), ("ip6tables", "mangle")):
        calls([tool + "-save", "-t", table], stdout="")
    calls(["lxc", "network", "acl", "delete", "botlxc-acme"])
    botlxc.destroy(op, purge=False)
    assert calls.made() == calls.expected  # lxdbr0 and the unlabelled bxforeign stay


def test_a_network_lxd_could_not_start_again_gets_its_stale_rules_dropped(calls, tmp_path):
    """LXD 5.0.2 restarted without a reboot: its old rules still jump to the ACL's chain, so
    it cannot clear it and leaves the tenant's bridge Unavailable (its containers cannot
    start). Only the jumps go; LXD's next retry (each minute) then starts the bridge."""
    spec = make_spec(tmp_path, components=("cache",), services=False, isolated=True)
    acl = botlxc.acl_document("acme", expected_targets())
    mark = '-m comment --comment "generated for LXD network %s"' % NET
    register(calls, isolated_world(spec), [dict(acme_net(), status="Unavailable")],
             [dict(acl, name="botlxc-acme")])
    calls(["iptables-save", "-t", "filter"], stdout="*filter\n-A INPUT -i %s %s -j lxd_acl_%s\n"
          "-A INPUT -i %s -p udp %s -j ACCEPT\nCOMMIT\n" % (NET, mark, NET, NET, mark))
    calls(["iptables", "-t", "filter", "-D", "INPUT", "-i", NET, "-m", "comment", "--comment",
           "generated for LXD network " + NET, "-j", "lxd_acl_" + NET])
    calls(["ip6tables-save", "-t", "filter"], stdout="")
    calls(["timeout", "90", "sh", "-c", 'until lxc query "/1.0/networks/$1" | grep -q '
           '\'"status": "Created"\'; do sleep 2; done', "wait", NET])
    botlxc.up(botlxc.Runner(), spec)
    assert calls.made() == calls.expected
