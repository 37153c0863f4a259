"""Host bootstrap (install, start, initialise LXD) and the Debian 12 image, per world."""
import json

import pytest

import botlxc
from conftest import (ADDRS, BRIDGE_NET, HOST_NIC, IMAGE_LIST, IP_ADDRS,
                      IP_ROUTES, LOCAL_IMAGE, MIRROR, POOLS, PROFILE, PROFILE_EMPTY,
                      QUERY_NETWORKS, QUERY_POOLS, QUERY_PROFILE, QUERY_SERVER, REMOTE_INFO,
                      ROUTES, SECURITY, SERVER, facts, register_host, register_routes,
                      world_facts)

APT_UPDATE = ["apt-get", "update"]
APT_INSTALL = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
               "--no-install-recommends", "lxd", "lxd-client", "dnsmasq-base", "iptables",
               "debootstrap", "btrfs-progs"]
LOG_DIR = ["mkdir", "-p", "/var/log/lxd"]
#: by pid file: LXD's forkproxy helpers run /usr/bin/lxd too and outlive a stopped daemon
START_DAEMON = ["start-stop-daemon", "--start", "--background", "--oknodo", "--make-pidfile",
                "--pidfile", "/run/botlxc-lxd.pid", "--exec", "/usr/bin/lxd", "--",
                "--group", "root", "--logfile", "/var/log/lxd/lxd.log"]
START_SYSTEMD = ["systemctl", "start", "lxd.socket", "lxd.service"]
WAITREADY = ["lxd", "waitready", "--timeout", "120"]
PRESEED = ["lxd", "init", "--preseed"]

PRESEED_HEAD = """\
# LXD preseed rendered by botlxc for an uninitialised LXD (`lxd init --preseed`).
# `lxd init --auto` cannot guess a free subnet on some hosts, so the bridge is explicit.
config: {}
storage_pools:
- name: default
"""
PRESEED_BRIDGE = """\
networks:
- name: lxdbr0
  type: bridge
  config:
    ipv4.address: 10.101.177.1/24
    ipv4.nat: "true"
    ipv6.address: none
"""
PRESEED_PROFILE = """\
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
    eth0:
      name: eth0
      network: lxdbr0
      type: nic
"""
PRESEED_BTRFS = PRESEED_HEAD + "  driver: btrfs\n" + PRESEED_BRIDGE + PRESEED_PROFILE


def argvs(runner):
    return [action.argv for action in runner.actions]


# ----------------------------------------------------------------------------- install


@pytest.mark.parametrize("root, debian", [(False, True), (True, False), (False, False)])
def test_missing_lxd_without_root_or_debian_is_one_line_and_exit_1(fp, root, debian):
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.ensure_host(runner, world_facts("nothing", root=root, debian=debian))
    assert failed.value.exit_code == 1
    assert "\n" not in str(failed.value)
    assert str(failed.value) == (
        "LXD is not installed. As root on Debian/Ubuntu run: apt-get update && apt-get "
        "install -y lxd lxd-client dnsmasq-base iptables debootstrap btrfs-progs  (or: snap "
        "install lxd)")
    assert list(fp.calls) == [] and runner.actions == []


def test_nothing_installed_plans_install_start_and_init_without_systemd(calls):
    # Reads still run in a dry run: a look at the (planned, so still absent) daemon after
    # the start, and the host's networks, since the bridge needs a free subnet.
    register_host(calls, "down")
    register_routes(calls)
    runner = botlxc.Runner(dry_run=True)
    world = botlxc.ensure_host(runner, world_facts("nothing"))
    assert calls.made() == calls.expected == [QUERY_SERVER, IP_ROUTES, IP_ADDRS]
    assert argvs(runner) == [APT_UPDATE, APT_INSTALL, LOG_DIR, START_DAEMON, WAITREADY,
                             PRESEED]
    assert runner.actions[-1].input == PRESEED_BTRFS
    assert world["daemon"] is False


def test_fresh_host_without_subids_gives_root_a_range_before_lxd_starts(calls):
    """Debian's lxd package adds no /etc/subuid entry; newuidmap then refuses LXD's
    default range and no unprivileged container starts (seen on a fresh machine)."""
    register_host(calls, "down")
    register_routes(calls)
    runner = botlxc.Runner(dry_run=True)
    botlxc.ensure_host(runner, world_facts("nothing", subids=False))
    # checked again when it runs: the lxd package may have added a range meanwhile
    usermod = ["sh", "-c", "grep -qs '^root:' /etc/subuid && grep -qs '^root:' /etc/subgid || "
               "usermod --add-subuids 1000000-1000999999 --add-subgids 1000000-1000999999 root"]
    assert argvs(runner) == [APT_UPDATE, APT_INSTALL, usermod, LOG_DIR, START_DAEMON,
                             WAITREADY, PRESEED]


def test_host_with_subids_is_not_touched(calls):
    register_host(calls, "ready")
    runner = botlxc.Runner(dry_run=True)
    botlxc.ensure_host(runner, world_facts("ready", subids=True))
    assert calls.made() == calls.expected
    assert argvs(runner) == []


def test_nothing_installed_with_systemd_starts_lxd_through_systemctl(calls):
    register_host(calls, "down")
    register_routes(calls)
    runner = botlxc.Runner(dry_run=True)
    botlxc.ensure_host(runner, world_facts("nothing", systemd=True))
    assert calls.made() == calls.expected
    assert argvs(runner) == [APT_UPDATE, APT_INSTALL, START_SYSTEMD, WAITREADY, PRESEED]


def test_daemon_down_is_started_in_the_background_without_systemd(calls):
    register_host(calls, "down")
    register_host(calls, "down")  # looked at again after the (planned) start
    register_routes(calls)
    runner = botlxc.Runner(dry_run=True)
    botlxc.ensure_host(runner, world_facts("down", lxd="/opt/lxd/bin/lxd"))
    assert calls.made() == calls.expected == [QUERY_SERVER, QUERY_SERVER, IP_ROUTES, IP_ADDRS]
    start = [a if a != "/usr/bin/lxd" else "/opt/lxd/bin/lxd" for a in START_DAEMON]
    assert argvs(runner) == [LOG_DIR, start, WAITREADY, PRESEED]


def test_daemon_down_with_systemd_is_started_through_systemctl(calls):
    register_host(calls, "down")
    register_host(calls, "down")
    register_routes(calls)
    runner = botlxc.Runner(dry_run=True)
    botlxc.ensure_host(runner, world_facts("down", systemd=True))
    assert calls.made() == calls.expected
    assert argvs(runner) == [START_SYSTEMD, WAITREADY, PRESEED]


def test_restarted_lxd_that_was_initialised_is_not_reinitialised(calls, fp):
    """LXD stopped (a reboot on a host without systemd), pool and bridge in place.

    Deciding from the pre-start snapshot would run `lxd init --preseed` on a configured
    LXD (and re-address lxdbr0): the design says never touch an initialised LXD.
    """
    register_host(calls, "down")
    calls(LOG_DIR)
    calls(START_DAEMON)
    calls(WAITREADY)
    register_host(calls, "ready")  # what the running LXD answers
    # registered so the test reaches its assertion if botlxc goes on to initialise anyway
    fp.register(IP_ROUTES, stdout=json.dumps(ROUTES))
    fp.register(IP_ADDRS, stdout=json.dumps(ADDRS))
    fp.register(PRESEED)
    runner = botlxc.Runner()
    botlxc.ensure_host(runner, world_facts("down"))
    assert PRESEED not in argvs(runner), "lxd init --preseed on an initialised LXD"
    assert argvs(runner) == [LOG_DIR, START_DAEMON, WAITREADY]
    assert calls.made() == calls.expected


# ----------------------------------------------------------------------------- initialise


def test_uninitialised_lxd_gets_btrfs_and_a_bridge_on_a_free_subnet(calls):
    register_host(calls, "uninitialised")
    register_routes(calls)
    calls(PRESEED)
    runner = botlxc.Runner()
    botlxc.ensure_host(runner, world_facts("uninitialised"))
    assert calls.made() == calls.expected == [
        QUERY_SERVER, QUERY_POOLS, QUERY_NETWORKS, QUERY_PROFILE, IP_ROUTES, IP_ADDRS, PRESEED]
    assert argvs(runner) == [PRESEED]
    assert runner.actions[0].input == PRESEED_BTRFS


def test_uninitialised_lxd_without_btrfs_gets_dir_and_keeps_an_existing_bridge(calls):
    calls(QUERY_SERVER, data=SERVER)
    calls(QUERY_POOLS, data=[])
    calls(QUERY_NETWORKS, data=[HOST_NIC, BRIDGE_NET])
    calls(QUERY_PROFILE, data=PROFILE_EMPTY)
    calls(PRESEED)
    runner = botlxc.Runner()
    botlxc.ensure_host(runner, world_facts("uninitialised", btrfs=False))
    assert calls.made() == calls.expected  # no `ip` reads: the bridge exists
    assert runner.actions[0].input == PRESEED_HEAD + "  driver: dir\n" + PRESEED_PROFILE


@pytest.mark.parametrize("pools, profile", [(POOLS, PROFILE_EMPTY), ([], PROFILE)])
def test_initialised_lxd_is_used_as_it_is(calls, pools, profile):
    """A pool, or a default profile with a root disk, means someone initialised it."""
    calls(QUERY_SERVER, data=SERVER)
    calls(QUERY_POOLS, data=pools)
    calls(QUERY_NETWORKS, data=[HOST_NIC])
    calls(QUERY_PROFILE, data=profile)
    runner = botlxc.Runner()
    botlxc.ensure_host(runner, world_facts("ready"))
    assert calls.made() == calls.expected
    assert runner.actions == []


def test_ready_host_only_reads(calls):
    register_host(calls, "ready")
    runner = botlxc.Runner()
    world = botlxc.ensure_host(runner, world_facts("ready"))
    assert calls.made() == calls.expected
    assert runner.actions == []
    assert world["daemon"] and world["pools"] == POOLS and world["profile"] == PROFILE


def test_free_subnet_skips_every_host_network():
    used = [botlxc.ipaddress.ip_network(n) for n in ("10.100.0.0/16", "10.101.77.0/24")]
    assert str(botlxc.free_subnet(used)) == "10.101.177.0/24"
    assert str(botlxc.free_subnet([])) == "10.100.77.0/24"


def test_host_addresses_count_even_without_a_route(calls):
    """A /24 that only shows up as an interface address (no route of its own)."""
    calls(IP_ROUTES, data=[{"dst": "default", "gateway": "192.168.1.1", "dev": "wlan0",
                            "flags": []}])
    calls(IP_ADDRS, data=[{"ifname": "tun0", "addr_info": [
        {"family": "inet", "local": "10.100.77.5", "prefixlen": 24, "scope": "global"}]}])
    used = botlxc.host_routes(botlxc.Runner(dry_run=True))
    assert calls.made() == calls.expected
    assert str(botlxc.free_subnet(used)) == "10.100.177.0/24"


def test_no_free_subnet_is_a_clear_error_before_any_change(calls):
    register_host(calls, "uninitialised")
    calls(IP_ROUTES, data=[{"dst": "10.0.0.0/8", "dev": "tun0", "flags": []}])
    calls(IP_ADDRS, data=[])
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BotlxcError, match="no free 10.x.y.0/24 subnet"):
        botlxc.ensure_host(runner, world_facts("uninitialised"))
    assert runner.actions == []
    assert calls.made() == calls.expected


# ----------------------------------------------------------------------------- image

BUILD = "/var/cache/botlxc/image-build"
ROOTFS = BUILD + "/rootfs"
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,"
               "systemd-resolved,udev,dbus,iproute2,ca-certificates,procps,less", "bookworm",
               ROOTFS, MIRROR]
WANTS = ROOTFS + "/etc/systemd/system/multi-user.target.wants/"
BUILD_REST = [
    ["install", "-D", "-m", "0644", "/dev/stdin", ROOTFS + "/etc/systemd/network/eth0.network"],
    ["install", "-D", "-m", "0644", "/dev/stdin", ROOTFS + "/etc/apt/sources.list"],
    ["install", "-D", "-m", "0644", "/dev/stdin", BUILD + "/metadata.yaml"],
    ["ln", "-sf", "/lib/systemd/system/systemd-networkd.service",
     WANTS + "systemd-networkd.service"],
    ["ln", "-sf", "/lib/systemd/system/systemd-resolved.service",
     WANTS + "systemd-resolved.service"],
    ["ln", "-sf", "/run/systemd/resolve/stub-resolv.conf", ROOTFS + "/etc/resolv.conf"],
    ["rm", "-f", ROOTFS + "/etc/hostname"],
    ["tar", "-C", BUILD, "-cf", BUILD + "/meta.tar", "metadata.yaml"],
    ["tar", "--numeric-owner", "-C", ROOTFS, "-cf", BUILD + "/rootfs.tar", "."],
    ["lxc", "image", "import", BUILD + "/meta.tar", BUILD + "/rootfs.tar", "--alias",
     "botlxc/debian-12"],
    ["rm", "-rf", BUILD],
]
#: What ensure_host observed on a host whose LXD runs (only "daemon" matters to the image).
LXD_RUNNING = {"daemon": True}
BUILD_SEQUENCE = [["rm", "-rf", BUILD], ["mkdir", "-p", BUILD], DEBOOTSTRAP] + BUILD_REST


def test_explicit_image_asks_nothing(fp):
    assert botlxc.ensure_image(botlxc.Runner(), facts(), LXD_RUNNING, "images:ubuntu/24.04") == \
        "images:ubuntu/24.04"
    assert list(fp.calls) == []


def test_local_alias_present_means_no_build(calls):
    calls(IMAGE_LIST, data=LOCAL_IMAGE)
    runner = botlxc.Runner()
    assert botlxc.ensure_image(runner, facts(), LXD_RUNNING) == "botlxc/debian-12"
    assert calls.made() == calls.expected and runner.actions == []


def test_reachable_remote_is_used_when_there_is_no_local_build(calls):
    # an alias that only starts with ours is not ours
    other = [dict(LOCAL_IMAGE[0], aliases=[{"name": "botlxc/debian-12-old"}])]
    calls(IMAGE_LIST, data=other)
    calls(REMOTE_INFO, stdout="Fingerprint: 5b1d0c\n")
    runner = botlxc.Runner()
    assert botlxc.ensure_image(runner, facts(), LXD_RUNNING) == "images:debian/12"
    assert calls.made() == calls.expected and runner.actions == []


def test_unreachable_remote_builds_with_debootstrap_from_the_host_mirror(calls):
    calls(IMAGE_LIST, data=[])
    calls(REMOTE_INFO, returncode=124)  # timeout(1) gave up
    for argv in BUILD_SEQUENCE:
        calls(argv)
    runner = botlxc.Runner()
    assert botlxc.ensure_image(runner, facts(), LXD_RUNNING) == "botlxc/debian-12"
    assert calls.made() == calls.expected
    assert argvs(runner) == BUILD_SEQUENCE
    inputs = {a.argv[-1]: a.input for a in runner.actions if a.input is not None}
    assert inputs[ROOTFS + "/etc/apt/sources.list"] == (
        "# The host's own Debian mirrors, as botlxc found them in the host's apt "
        "configuration.\n"
        "deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-backports main\n"
        "deb %s bookworm-security main\n" % (MIRROR, MIRROR, MIRROR, SECURITY))
    assert inputs[ROOTFS + "/etc/systemd/network/eth0.network"] == (
        "# DHCP on the LXD bridge (botlxc image)\n[Match]\nName=eth0\n\n[Network]\n"
        "DHCP=ipv4\n")
    metadata = inputs[BUILD + "/metadata.yaml"]
    assert metadata.startswith("architecture: %s\ncreation_date: " % botlxc.os.uname().machine)
    assert "  release: bookworm\n" in metadata


def test_image_build_without_a_security_mirror_and_without_debootstrap(calls):
    calls(IMAGE_LIST, data=[])
    calls(REMOTE_INFO, returncode=1)
    runner = botlxc.Runner(dry_run=True)
    host = facts(debootstrap=False, mirrors={"debian": MIRROR, "security": None})
    botlxc.ensure_image(runner, host, LXD_RUNNING)
    assert calls.made() == calls.expected
    assert argvs(runner) == [["rm", "-rf", BUILD], ["mkdir", "-p", BUILD],
                             ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install",
                              "-y", "debootstrap"], DEBOOTSTRAP] + BUILD_REST
    sources = runner.actions[5].input
    assert sources.splitlines(keepends=True)[1:] == ["deb %s bookworm main\n" % MIRROR,
                                                     "deb %s bookworm-updates main\n" % MIRROR,
                                                     "deb %s bookworm-backports main\n" % MIRROR]


def test_debootstrap_is_retried_after_a_mirror_hiccup(calls):
    calls(["rm", "-rf", BUILD])
    calls(["mkdir", "-p", BUILD])
    calls(DEBOOTSTRAP, returncode=1, stderr="E: Couldn't download packages: udev\n")
    calls(DEBOOTSTRAP)
    for argv in BUILD_REST:
        calls(argv)
    runner = botlxc.Runner()
    botlxc.build_image_actions(runner, facts())
    assert calls.made() == calls.expected


def test_debootstrap_gives_up_after_three_attempts_with_the_real_error(calls):
    calls(["rm", "-rf", BUILD])
    calls(["mkdir", "-p", BUILD])
    for _ in range(3):
        calls(DEBOOTSTRAP, returncode=1, stderr="E: Couldn't download packages: udev\n")
    with pytest.raises(botlxc.CommandFailed) as failed:
        botlxc.build_image_actions(botlxc.Runner(), facts())
    assert calls.made() == calls.expected
    assert failed.value.argv == DEBOOTSTRAP
    assert str(failed.value).endswith("-- E: Couldn't download packages: udev")


def test_image_build_without_a_bookworm_mirror_fails_before_any_change(calls):
    calls(IMAGE_LIST, data=[])
    calls(REMOTE_INFO, returncode=124)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BotlxcError, match="no bookworm mirror"):
        botlxc.ensure_image(runner, facts(mirrors={"debian": None, "security": None}),
                            LXD_RUNNING)
    assert runner.actions == []
    assert calls.made() == calls.expected


# ----------------------------------------------------------------------------- mirrors


def test_apt_mirrors_from_deb822_and_one_line_sources(tmp_path):
    apt = tmp_path / "etc" / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb deb-src\n"
        "URIs: http://deb.example.net/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBGPL\n\n"
        "Types: deb\n"
        "URIs: http://disabled.example.net/debian-security\n"
        "Suites: bookworm-security\n"
        "Enabled: no\n\n"
        "Types: deb-src\n"
        "URIs: http://src-only.example.net/debian-security\n"
        "Suites: bookworm-security\n")
    (apt / "sources.list").write_text(
        "# deb http://commented.example.net/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] "
        "http://sec.example.net/debian-security bookworm-security main\n"
        "deb http://late.example.net/debian bookworm main\n")
    assert botlxc.read_apt_mirrors(tmp_path) == {
        "debian": "http://deb.example.net/debian",
        "security": "http://sec.example.net/debian-security"}


def test_apt_mirrors_of_a_host_that_is_not_bookworm(tmp_path):
    (tmp_path / "etc" / "apt").mkdir(parents=True)
    (tmp_path / "etc" / "apt" / "sources.list").write_text(
        "deb http://archive.ubuntu.com/ubuntu noble main\n")
    assert botlxc.read_apt_mirrors(tmp_path) == {"debian": None, "security": None}


def test_a_third_party_bookworm_repository_is_not_taken_for_the_debian_mirror(tmp_path):
    apt = tmp_path / "etc" / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "aaa-vendor.sources").write_text(
        "Types: deb\nURIs: https://vendor.example.net/linux/debian\nSuites: bookworm\n"
        "Components: stable\n")
    (apt / "sources.list.d" / "tools.list").write_text(
        "deb https://tools.example.net/apt bookworm contrib-tools\n")
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example.net/debian\nSuites: bookworm\nComponents: main\n")
    assert botlxc.read_apt_mirrors(tmp_path) == {
        "debian": "http://deb.example.net/debian", "security": None}


def test_low_inotify_limits_are_raised_and_kept(calls):
    """~15 containers exhaust 128 inotify instances: networkd fails, no DHCP lease."""
    runner = botlxc.Runner(dry_run=True)
    botlxc.ensure_sysctls(runner, facts(sysctls={"fs.inotify.max_user_instances": 128,
                                                 "fs.inotify.max_user_watches": 2000000}))
    assert [a.argv for a in runner.actions] == [
        ["install", "-m", "0644", "/dev/stdin", "/etc/sysctl.d/60-botlxc.conf"],
        ["sysctl", "-q", "-p", "/etc/sysctl.d/60-botlxc.conf"]]
    assert "fs.inotify.max_user_instances = 1024\n" in runner.actions[0].input
    high = botlxc.Runner(dry_run=True)
    botlxc.ensure_sysctls(high, facts(sysctls={"fs.inotify.max_user_instances": 8192,
                                               "fs.inotify.max_user_watches": 2000000}))
    assert high.actions == []  # never lowered
