"""Unit-test fixtures: canned worlds behind the one seam.

The only fake is pytest-subprocess (`fp`), which replaces subprocess.Popen under
Runner._exec's subprocess.run. Every unit test runs under it (autouse below), and
unregistered commands are never allowed: a command a test did not register raises, so a
leaked call can never reach the real `lxc` on this machine. Host facts are injected by
building botlxc.HostFacts directly; stack dirs and CA files live in tmp_path.

Worlds (what LXD answers), named as in the design notes:

  nothing        no lxc binary: HostFacts(lxc=None, lxd=None); nothing is asked
  down           LXD installed, daemon down: `lxc query /1.0` fails
  uninitialised  LXD up, no storage pool, default profile without a root disk
  ready          LXD up and initialised (pool, lxdbr0, profile with root + eth0)
  + image        the local botlxc/debian-12 alias present (or not)
  + tenant       `lxc list --format json`: nothing, or the tenant already up (three
                 labelled instances with data/conf/logs/port-N devices, Running, with
                 user.botlxc.installed / host-ca as botlxc sets them), plus another tenant
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import botlxc

TENANT = "acme"
#: Host uid of an unprivileged container's root (LXD's idmap), and owner of its host dirs.
#: Unit tests run as root on CI; elsewhere the host dirs can only be owned by the caller
#: (botlxc wants uid == gid there, which holds for the usual per-user groups).
OWNER = 1000000 if os.geteuid() == 0 else os.getuid()
MIRROR = "http://mirror.example.org/debian"
SECURITY = "http://mirror.example.org/debian-security"
DEFAULT_PORTS = {("tables", "pg"): 5432, ("drive", "s3"): 9000, ("cache", "valkey"): 6379}
#: The drive's minio engine has a console port too.
CONSOLE_PORT = {("drive", "console"): 9001}
CA_PEM = ("-----BEGIN CERTIFICATE-----\n"
          "MIIBszCCAVmgAwIBAgIUQ29ycFByb3h5Um9vdENBMB4XDTI1MTEyNjAwMDAwMFoX\n"
          "-----END CERTIFICATE-----\n")

# ----------------------------------------------------------------------------- live order

#: Live tests that install llm wait for its wheel; they run late (before doctor's, which
#: stops LXD), and the session starts the build at its beginning (`botlxc host wheels`,
#: niced), so it overlaps the other live tests instead of adding its ~10 minutes.
LATE = ("test_live_components.py",)
LAST = ("test_live_zdoctor.py",)


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = Path(str(item.fspath)).name
        return 2 if name in LAST else 1 if name in LATE else 0
    items.sort(key=rank)  # (stable: the order within each group is kept)


@pytest.fixture(scope="session", autouse=True)
def _wheels_in_background(request, tmp_path_factory):
    wanted = any(Path(str(i.fspath)).name in LATE for i in request.session.items)
    if not wanted or os.geteuid() != 0 or not shutil.which("lxc"):
        yield
        return
    log = tmp_path_factory.mktemp("wheels") / "host-wheels.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent.parent
                                                     / "botlxc.py"), "host", "wheels"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    yield
    proc.wait(timeout=3600)  # (an llm test waits for it on the build lock anyway)


# ----------------------------------------------------------------------------- guards


@pytest.fixture(autouse=True)
def _one_seam(request):
    """Every unit test runs under fp: an unregistered command fails the test."""
    if request.node.get_closest_marker("live"):
        yield None
        return
    fake = request.getfixturevalue("fp")
    assert not fake._allow_unregistered, "unit tests never allow unregistered commands"
    yield fake
    assert not fake._allow_unregistered, "unit tests never allow unregistered commands"


@pytest.fixture(autouse=True)
def _no_sleep(request, monkeypatch):
    """tenacity (and botlxc's wait loops) sleep through time.sleep: make it instant."""
    if not request.node.get_closest_marker("live"):
        monkeypatch.setattr("time.sleep", lambda seconds: None)


@pytest.fixture(autouse=True)
def _quiet():
    """-v in one CLI test must not leak into the next (botlxc keeps it in a global)."""
    yield
    botlxc.VERBOSE["level"] = 0


# ----------------------------------------------------------------------------- recording


class _Any:
    """Stands for one argument the test cannot know in advance (a digest of new secrets)."""

    def __eq__(self, other):
        return isinstance(other, str)

    def __repr__(self):
        return "ANY"


ANY = _Any()


class Calls:
    """Register canned processes in the order they are expected; remember that order.

    `calls(argv, ...)` registers one process for argv and appends argv to `expected`,
    so a test reads as the literal sequence and ends with `assert calls.made() == calls.expected`.
    """

    def __init__(self, fp):
        self.fp = fp
        self.expected = []

    def __call__(self, argv, data=None, stdout="", stderr="", returncode=0):
        if data is not None:
            stdout = json.dumps(data)
        pattern = [self.fp.any(min=1, max=1) if arg is ANY else arg for arg in argv]
        self.fp.register(pattern, stdout=stdout, stderr=stderr, returncode=returncode)
        self.expected.append(list(argv))

    def made(self):
        return [list(argv) for argv in self.fp.calls]


@pytest.fixture
def calls(fp):
    return Calls(fp)


def facts(**overrides):
    """A Debian host, root, no systemd as PID 1, btrfs, no CA files."""
    values = dict(lxc="/usr/bin/lxc", lxd="/usr/bin/lxd", debootstrap=True, root=True,
                  debian=True, systemd=False, btrfs=True, subuid_base=OWNER,
                  mirrors={"debian": MIRROR, "security": SECURITY}, pip_index_url="",
                  ca_files=())
    values.update(overrides)
    return botlxc.HostFacts(**values)


def make_spec(tmp_path, components=botlxc.DEFAULT_COMPONENTS, **overrides):
    """The tenant acme, its stack under tmp_path, one job (deterministic order), on the
    shared bridge (test_network.py covers a tenant's own network, the default)."""
    values = dict(tenant=TENANT, components=tuple(components), stack=tmp_path / "stack",
                  jobs=1, host=facts(), isolated=False)
    values.update(overrides)
    return botlxc.Spec(**values)


@pytest.fixture
def ca_file(tmp_path):
    path = tmp_path / "ca" / "corp-proxy-root.crt"
    path.parent.mkdir()
    path.write_text(CA_PEM)
    return path


# ----------------------------------------------------------------------------- LXD answers

SERVER = {"api_extensions": ["storage", "network", "instances"], "api_status": "stable",
          "api_version": "1.0", "auth": "trusted", "public": False,
          "environment": {"driver": "lxc", "kernel": "Linux", "server": "lxd",
                          "server_version": "5.0.2", "storage": "btrfs"}}
POOLS = [{"name": "default", "driver": "btrfs", "status": "Created", "description": "",
          "config": {"size": "30GiB", "source": "/var/lib/lxd/disks/default.img"},
          "used_by": ["/1.0/profiles/default"], "locations": ["none"]}]
HOST_NIC = {"name": "eth0", "type": "physical", "managed": False, "config": {},
            "description": "", "used_by": [], "status": "", "locations": []}
BRIDGE_NET = {"name": "lxdbr0", "type": "bridge", "managed": True, "status": "Created",
              "description": "", "config": {"ipv4.address": "10.101.177.1/24",
                                            "ipv4.nat": "true", "ipv6.address": "none"},
              "used_by": ["/1.0/profiles/default"], "locations": ["none"]}
PROFILE_EMPTY = {"name": "default", "description": "Default LXD profile", "config": {},
                 "devices": {}, "used_by": []}
PROFILE = {"name": "default", "description": "Default LXD profile", "config": {},
           "devices": {"root": {"path": "/", "pool": "default", "type": "disk"},
                       "eth0": {"name": "eth0", "network": "lxdbr0", "type": "nic"}},
           "used_by": []}
DAEMON_DOWN = ('Error: LXD unix socket "/var/lib/lxd/unix.socket" not accessible: Get '
               '"http://unix.socket/1.0": dial unix /var/lib/lxd/unix.socket: connect: '
               'connection refused\n')
LOCAL_IMAGE = [{"aliases": [{"name": "botlxc/debian-12", "description": ""}],
                "architecture": "x86_64", "auto_update": False, "cached": False,
                "fingerprint": "3f1c0b6d8e2a4f5b9c7d1e0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e",
                "filename": "", "properties": {"description": "Debian 12 (bookworm), built "
                                               "by botlxc with debootstrap", "os": "debian"},
                "public": False, "size": 97456128, "type": "container"}]
# `ip -j -4 route show table all` / `ip -j -4 addr`: 10.100.0.0/16 is routed (a VPN),
# the host sits on 10.101.77.0/24, so the first free candidate is 10.101.177.0/24.
ROUTES = [{"dst": "default", "gateway": "10.101.77.1", "dev": "eth0", "flags": []},
          {"dst": "10.100.0.0/16", "gateway": "10.101.77.254", "dev": "eth0", "flags": []},
          {"dst": "10.101.77.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link",
           "prefsrc": "10.101.77.20", "flags": []},
          {"type": "local", "dst": "127.0.0.0/8", "table": "local", "dev": "lo",
           "protocol": "kernel", "scope": "host", "prefsrc": "127.0.0.1", "flags": []}]
ADDRS = [{"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP"], "mtu": 65536,
          "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8,
                         "scope": "host", "label": "lo"}]},
         {"ifindex": 2, "ifname": "eth0", "flags": ["BROADCAST", "UP"], "mtu": 1500,
          "addr_info": [{"family": "inet", "local": "10.101.77.20", "prefixlen": 24,
                         "scope": "global", "label": "eth0"}]}]
FREE_BRIDGE = "10.101.177.1/24"

QUERY_SERVER = ["lxc", "query", "/1.0"]
QUERY_POOLS = ["lxc", "query", "/1.0/storage-pools?recursion=1"]
QUERY_NETWORKS = ["lxc", "query", "/1.0/networks?recursion=1"]
QUERY_PROFILE = ["lxc", "query", "/1.0/profiles/default"]
IMAGE_LIST = ["lxc", "image", "list", "local:botlxc/debian-12", "--format", "json"]
REMOTE_INFO = ["timeout", "20", "lxc", "image", "info", "images:debian/12"]
LIST = ["lxc", "list", "--format", "json"]
SS = ["ss", "-Htlnp"]
IP_ROUTES = ["ip", "-j", "-4", "route", "show", "table", "all"]
IP_ADDRS = ["ip", "-j", "-4", "addr"]


def register_host(calls, world):
    """The reads observe_host makes in a named world."""
    if world == "nothing":
        return
    if world == "down":
        calls(QUERY_SERVER, stderr=DAEMON_DOWN, returncode=1)
        return
    calls(QUERY_SERVER, data=SERVER)
    if world == "uninitialised":
        calls(QUERY_POOLS, data=[])
        calls(QUERY_NETWORKS, data=[HOST_NIC])
        calls(QUERY_PROFILE, data=PROFILE_EMPTY)
    elif world == "ready":
        calls(QUERY_POOLS, data=POOLS)
        calls(QUERY_NETWORKS, data=[HOST_NIC, BRIDGE_NET])
        calls(QUERY_PROFILE, data=PROFILE)
    else:
        raise ValueError(world)


def world_facts(world, **overrides):
    if world == "nothing":
        overrides = dict(dict(lxc=None, lxd=None), **overrides)
    return facts(**overrides)


def register_routes(calls):
    calls(IP_ROUTES, data=ROUTES)
    calls(IP_ADDRS, data=ADDRS)


def ss_output(listeners):
    """`ss -Htlnp` as it prints {port: (program, pid)} listening on loopback, plus sshd."""
    lines = ['LISTEN 0      128          0.0.0.0:22         0.0.0.0:*    '
             'users:(("sshd",pid=401,fd=3))']
    for port, (program, pid) in sorted(listeners.items()):
        lines.append('LISTEN 0      4096       127.0.0.1:%d      0.0.0.0:*    '
                     'users:(("%s",pid=%d,fd=5))' % (port, program, pid))
    return "\n".join(lines) + "\n"


def register_ready(calls, instances=(), image=True, listeners=None, ss=True):
    """World 'ready' + image present (or not: then images: answers) + `lxc list` + the
    host's listeners (read under the host lock before ports are chosen; ss=False for a run
    refused before that)."""
    register_host(calls, "ready")
    calls(IMAGE_LIST, data=LOCAL_IMAGE if image else [])
    if not image:
        calls(REMOTE_INFO, stdout="Fingerprint: 5b1d0c\nArchitecture: x86_64\n")
    calls(LIST, data=list(instances))
    if ss:
        calls(SS, stdout=ss_output(listeners or {}))


# ----------------------------------------------------------------------------- instances

#: The ids of the tenant that is up (security.idmap.isolated, base OWNER); unit tests give
#: all its containers the same base, which changes nothing they check.
IDMAP = json.dumps([
    {"Isuid": True, "Isgid": False, "Hostid": OWNER, "Nsid": 0, "Maprange": 65536},
    {"Isuid": False, "Isgid": True, "Hostid": OWNER, "Nsid": 0, "Maprange": 65536}])


def network_state(address):
    return {
        "eth0": {"addresses": [{"family": "inet", "address": address, "netmask": "24",
                                "scope": "global"},
                               {"family": "inet6", "address": "fe80::216:3eff:fe4c:1a2b",
                                "netmask": "64", "scope": "link"}],
                 "host_name": "vethb1a2c3d4", "hwaddr": "00:16:3e:4c:1a:2b", "mtu": 1500,
                 "state": "up", "type": "broadcast"},
        "lo": {"addresses": [{"family": "inet", "address": "127.0.0.1", "netmask": "8",
                              "scope": "local"}],
               "host_name": "", "hwaddr": "", "mtu": 65536, "state": "up", "type": "loopback"}}


def instance(name, config, devices, status="Running", address="10.101.177.23"):
    """One entry of `lxc list --format json` (LXD 5.0), with the fields botlxc reads."""
    running = status == "Running"
    base_config = {"image.architecture": "amd64", "image.os": "debian",
                   "image.release": "bookworm", "volatile.base_image": LOCAL_IMAGE[0][
                       "fingerprint"], "volatile.idmap.base": "0",
                   "volatile.idmap.current": IDMAP, "volatile.idmap.next": IDMAP,
                   "volatile.last_state.idmap": IDMAP, "volatile.last_state.power":
                   "RUNNING" if running else "STOPPED", "volatile.eth0.hwaddr":
                   "00:16:3e:4c:1a:2b"}
    base_config.update(config)
    return {
        "architecture": "x86_64", "config": base_config, "devices": devices,
        "ephemeral": False, "profiles": ["default"], "stateful": False, "description": "",
        "created_at": "2025-11-26T23:40:00Z", "expanded_config": base_config,
        "expanded_devices": dict(devices, **PROFILE["devices"]), "name": name,
        "status": status, "status_code": 103 if running else 102,
        "last_used_at": "2025-11-26T23:41:00Z", "location": "none", "type": "container",
        "project": "default", "backups": None, "snapshots": None,
        "state": {"status": status, "status_code": 103 if running else 102, "disk": {},
                  "memory": {}, "network": network_state(address) if running else None,
                  "pid": 4242 if running else 0, "processes": 12 if running else 0,
                  "cpu": {"usage": 0}},
    }


def master_text(component):
    """<stack>/.botlxc/secrets/<component>.env of the tenant that is up, written out."""
    return "".join("%s=%s\n" % kv for kv in SECRETS[component].items())


def installed_label(spec, component):
    """user.botlxc.installed as ensure_service sets it (test_up checks they agree)."""
    parts = [part for item in botlxc.render_files(spec, component) for part in item]
    engine = botlxc.COMPONENTS[component].engine(spec.engine_of(component))
    binary = spec.artifacts.get(component) if engine.artifact else None
    return botlxc.digest(*parts, binary[1] if binary else "")


def tenant_instance(spec, component, ports=None, status="Running", installed=True,
                    address=None):
    """{tenant}-{component} exactly as botlxc creates it: labels, mounts, proxy devices."""
    ports = {**DEFAULT_PORTS, **CONSOLE_PORT, **(ports or {})}
    stack = str(spec.stack)
    config = {"security.privileged": "false", "security.protection.delete": "true",
              "security.idmap.isolated": "true", "security.idmap.base": str(OWNER),
              "user.botlxc.tenant": spec.tenant,
              "user.botlxc.component": component, "user.botlxc.version": botlxc.VERSION,
              "user.botlxc.stack": stack}
    if len(botlxc.COMPONENTS[component].engines) > 1:
        config["user.botlxc.engine"] = spec.engine_of(component)
    if installed:
        config["user.botlxc.installed"] = installed_label(spec, component)
    if spec.host.ca_files:
        config["user.botlxc.host-ca"] = botlxc.digest(
            *[path.read_bytes() for path in spec.host.ca_files])
    devices = {which: {"path": "/opt/gbo/" + which, "source": "%s/%s/%s" % (
        stack, component, which), "type": "disk"} for which in ("data", "conf", "logs")}
    for port in botlxc.COMPONENTS[component].ports_for(spec.engine_of(component)):
        host_port = ports[(component, port.name)]
        devices["port-%d" % host_port] = {"connect": "tcp:127.0.0.1:%d" % port.port,
                                          "listen": "tcp:127.0.0.1:%d" % host_port,
                                          "type": "proxy"}
    index = list(botlxc.COMPONENTS).index(component)
    return instance(spec.name(component), config, devices, status=status,
                    address=address or "10.101.177.%d" % (23 + index))


def other_tenant(ports):
    """Tenant beta's instances (not ours): only their proxy ports matter to acme."""
    found = []
    for component, host_port in ports.items():
        found.append(instance("beta-" + component, {
            "user.botlxc.tenant": "beta", "user.botlxc.component": component,
            "user.botlxc.stack": "/srv/beta"}, {
            "port-%d" % host_port: {"connect": "tcp:127.0.0.1:1", "type": "proxy",
                                    "listen": "tcp:127.0.0.1:%d" % host_port}},
            address="10.101.177.99"))
    return found


#: Secrets of the tenant that is already up (what <stack>/.botlxc/secrets/<c>.env holds).
SECRETS = {"tables": {"TABLES_PASSWORD": "Tq7ffYdXh3Kz0mN4rS8uV2wA6bC1eG5i"},
           "drive": {"DRIVE_ACCESSKEY": "AK7Hq2Lm9Np4Rs6Tv8Wx",
                     "DRIVE_SECRET": "Sx3Dy5Fz7Gh9Jk1Lm2Nb4Vc6Xz8Qw0Er"},
           "cache": {"CACHE_PASSWORD": "Cp1Oq2Ir3Ws4Et5Yu6Ti7Pa8Sd9Fg0Hj"}}


def env_text(tenant=TENANT, ports=None, components=botlxc.DEFAULT_COMPONENTS):
    """The stack's .env in the form BotServer reads (the design's contract, written out)."""
    ports = {**DEFAULT_PORTS, **(ports or {})}
    lines = {
        "tables": ["DATABASE_URL=postgres://gbuser:%s@127.0.0.1:%d/botserver"
                   % (SECRETS["tables"]["TABLES_PASSWORD"], ports[("tables", "pg")])],
        "drive": ["DRIVE_SERVER=http://127.0.0.1:%d" % ports[("drive", "s3")],
                  "DRIVE_ACCESSKEY=" + SECRETS["drive"]["DRIVE_ACCESSKEY"],
                  "DRIVE_SECRET=" + SECRETS["drive"]["DRIVE_SECRET"]],
        "cache": ["CACHE_URL=redis://gbuser:%s@127.0.0.1:%d"
                  % (SECRETS["cache"]["CACHE_PASSWORD"], ports[("cache", "valkey")])],
    }
    text = ["# BotServer settings for tenant %s, written by botlxc (keep private)" % tenant]
    for component in components:
        text += lines[component]
    return "\n".join(text) + "\n"


def prepare_stack(spec, ports=None):
    """The host side of a tenant that is up: its marker, dirs owned by container root, the
    secrets' master copies in the root-only state dir, .env."""
    state = spec.stack / ".botlxc"
    (state / "secrets").mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    (state / "secrets").chmod(0o700)
    (state / "tenant").write_text(spec.tenant + "\n")
    for component in spec.components:
        for which in ("data", "conf", "logs"):
            path = spec.stack / component / which
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, OWNER, OWNER)
        master = state / "secrets" / (component + ".env")
        master.write_text(master_text(component))
        master.chmod(0o600)
        (state / "ids").mkdir(mode=0o700, exist_ok=True)
        (state / "ids" / component).write_text("%d\n" % OWNER)
    env = spec.stack / ".env"
    env.write_text(env_text(spec.tenant, ports, spec.components))
    env.chmod(0o600)


def up_world(spec, ports=None, **instance_kw):
    """The tenant already up: its host side on disk, its three instances as LXD lists them."""
    prepare_stack(spec, ports)
    return [tenant_instance(spec, c, ports, **instance_kw) for c in spec.components]


def health_reads(calls, spec, components=None):
    """The health probes botlxc runs inside each (running, installed) instance."""
    for component in components or spec.components:
        calls(["lxc", "exec", spec.name(component), "--", "sh",
               "/usr/local/lib/botlxc/health.sh"], stdout="%s: ok\n" % component)


def secrets_read(calls, spec, component, text=None):
    """`sha256sum` of the secrets inside the container; by default they are the ones the
    tenant that is up has (SECRETS)."""
    sha = hashlib.sha256((master_text(component) if text is None else text).encode())
    calls(["lxc", "exec", spec.name(component), "--", "sha256sum", "/etc/botlxc/secrets.env"],
          stdout="%s  /etc/botlxc/secrets.env\n" % sha.hexdigest())


def converged_reads(calls, spec, components=None):
    """What `up` reads of an installed component to leave it alone: the sha256 of the
    secrets inside (the host's copy), then the health probe."""
    for component in components or spec.components:
        secrets_read(calls, spec, component)
        health_reads(calls, spec, [component])
