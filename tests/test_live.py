"""Live tests: a real LXD, real containers, real services, real clients from the host.

They need root and a running LXD (`botlxc host setup` prepares one). Elsewhere they skip
with the reason; with BOTLXC_LIVE=1 (as in .ci/run) a missing LXD is a failure instead.
Every test tenant has a unique name and is removed at the end, even on failure.
"""
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parent.parent
LIVE_REQUIRED = os.environ.get("BOTLXC_LIVE") == "1"


def _lxd_problem():
    if os.geteuid() != 0:
        return "live tests need root"
    if not shutil.which("lxc"):
        return "no lxc client (run: botlxc host setup)"
    proc = subprocess.run(["lxc", "query", "/1.0"], capture_output=True, text=True)
    if proc.returncode != 0:
        return "LXD is not running (run: botlxc host setup): " + proc.stderr.strip()
    return None


@pytest.fixture(scope="session", autouse=True)
def real_lxd():
    problem = _lxd_problem()
    if problem and LIVE_REQUIRED:
        pytest.fail("BOTLXC_LIVE=1 but " + problem, pytrace=False)
    if problem:
        pytest.skip(problem)


def botlxc(*args, check=True, cwd=None):
    """Run the CLI as a user would; returns the CompletedProcess (stdout, stderr, rc)."""
    proc = subprocess.run([sys.executable, str(ROOT / "botlxc.py"), *args],
                          capture_output=True, text=True, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError("botlxc %s failed (%d):\n%s\n%s" % (
            " ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc


def lxc(*args, check=True, input=None):
    proc = subprocess.run(["lxc", *args], capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise AssertionError("lxc %s failed: %s" % (" ".join(args), proc.stderr))
    return proc


def instances(tenant):
    data = json.loads(lxc("list", "user.botlxc.tenant=" + tenant, "--format", "json").stdout)
    return {i["name"]: i for i in data}


def changes(proc):
    """The '<n> changes' summary botlxc prints on stderr."""
    for line in proc.stderr.splitlines():
        words = line.split()
        if len(words) == 2 and words[1] in ("change", "changes"):
            return int(words[0])
    raise AssertionError("no change count in:\n" + proc.stderr)


def make_tenant(tmp_path_factory, prefix):
    tenant = "%s%s" % (prefix, secrets.token_hex(3))
    stack = tmp_path_factory.mktemp(tenant) / "stack"
    return tenant, stack


@contextlib.contextmanager
def srv_dir(prefix):
    """A root-owned dir of a test module's own under /srv (service users on the host must
    be able to enter it, which root's 0700 pytest tmp dirs forbid), removed afterwards."""
    path = Path("/srv") / ("botlxc-test-%s-%s" % (prefix, secrets.token_hex(3)))
    path.mkdir(mode=0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def cleanup(tenant):
    botlxc("destroy", "--tenant", tenant, "--purge-data", "--yes", check=False)
    botlxc("down", "--tenant", tenant, check=False)
    for name in instances(tenant):  # anything they could not remove (copies included)
        force_delete(name)


def force_delete(name):
    """A container botlxc made is delete-protected: lift that, then delete."""
    lxc("config", "unset", name, "security.protection.delete", check=False)
    lxc("delete", "--force", name, check=False)


# ----------------------------------------------------------------- containers only (issue 2)


@pytest.fixture(scope="module")
def bare_tenant(tmp_path_factory):
    tenant, stack = make_tenant(tmp_path_factory, "bare")
    try:
        first = botlxc("up", "--tenant", tenant, "--stack-dir", str(stack), "--containers-only")
        yield tenant, stack, first
    finally:
        cleanup(tenant)


def test_host_setup_is_idempotent():
    proc = botlxc("host", "setup")
    assert changes(proc) == 0, proc.stderr


def test_containers_running_with_labels(bare_tenant):
    tenant, stack, _ = bare_tenant
    found = instances(tenant)
    assert sorted(found) == sorted("%s-%s" % (tenant, c) for c in ("tables", "drive", "cache"))
    for name, inst in found.items():
        assert inst["status"] == "Running"
        config = inst["config"]
        assert config["user.botlxc.tenant"] == tenant
        assert config["user.botlxc.component"] == name.split("-", 1)[1]
        assert config["security.privileged"] == "false"
        assert config["user.botlxc.stack"] == str(stack.resolve())


def test_mounts_writable_inside_and_owned_right_on_host(bare_tenant):
    tenant, stack, _ = bare_tenant
    idmap = json.loads(lxc("config", "get", tenant + "-tables", "volatile.idmap.current").stdout)
    root_host_uid = next(e["Hostid"] for e in idmap if e["Isuid"] and e["Nsid"] == 0)
    for which in ("data", "conf", "logs"):
        lxc("exec", tenant + "-tables", "--", "dd", "of=/opt/gbo/%s/probe.txt" % which,
            input="written inside\n")
        host_file = stack / "tables" / which / "probe.txt"
        assert host_file.read_text() == "written inside\n"
        assert host_file.stat().st_uid == root_host_uid
        assert (stack / "tables" / which).stat().st_uid == root_host_uid


def test_listener_inside_reachable_through_proxy(bare_tenant):
    tenant, _, _ = bare_tenant
    name = tenant + "-cache"
    inst = instances(tenant)[name]
    device = next(d for d in inst["devices"].values() if d["type"] == "proxy")
    host_port = int(device["listen"].rsplit(":", 1)[1])
    assert device["listen"].startswith("tcp:127.0.0.1:")
    # perl-base is in every Debian image: a one-shot TCP server on the container's 6379.
    server = subprocess.Popen(
        ["lxc", "exec", name, "--", "perl", "-MIO::Socket::INET", "-e",
         "my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1:6379', Listen => 1, "
         "ReuseAddr => 1) or die; my $c = $s->accept; print $c qq(hello from inside\\n);"])
    try:
        import socket
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", host_port), timeout=5) as conn:
                    data = conn.recv(100)
                if data:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "nothing answered through the proxy"
            time.sleep(0.5)
        assert data == b"hello from inside\n"
    finally:
        server.kill()


def test_second_up_changes_nothing(bare_tenant):
    tenant, stack, _ = bare_tenant
    proc = botlxc("up", "--tenant", tenant, "--stack-dir", str(stack), "--containers-only")
    assert changes(proc) == 0, proc.stderr


def test_dry_run_changes_nothing_and_prints_runbook(bare_tenant, tmp_path):
    tenant, stack, _ = bare_tenant
    before = instances(tenant)
    proc = botlxc("up", "--tenant", tenant + "x", "--stack-dir", str(tmp_path / "s"),
                  "--containers-only", "--dry-run")
    assert proc.stdout.startswith("#!/usr/bin/env bash")
    assert "lxc init" in proc.stdout
    assert subprocess.run(["bash", "-n"], input=proc.stdout, text=True).returncode == 0
    assert not instances(tenant + "x")
    assert not (tmp_path / "s").exists()
    assert instances(tenant).keys() == before.keys()


def test_zz_down_keeps_host_files(bare_tenant):
    tenant, stack, _ = bare_tenant
    (stack / "drive" / "data" / "keep.txt").write_text("mine")
    proc = botlxc("down", "--tenant", tenant)
    assert "data kept in" in proc.stderr
    assert instances(tenant) == {}
    assert (stack / "drive" / "data" / "keep.txt").read_text() == "mine"


def test_privileged_is_an_explicit_opt_in(tmp_path_factory):
    tenant, stack = make_tenant(tmp_path_factory, "priv")
    try:
        botlxc("up", "--tenant", tenant, "--stack-dir", str(stack), "--containers-only",
               "--privileged", "--component", "cache")
        name = tenant + "-cache"
        assert instances(tenant)[name]["config"]["security.privileged"] == "true"
        lxc("exec", name, "--", "dd", "of=/opt/gbo/data/p.txt", input="root inside\n")
        written = stack / "cache" / "data" / "p.txt"
        assert written.stat().st_uid == 0  # privileged: container root is host root
        assert (stack / "cache" / "data").stat().st_uid == 0
    finally:
        cleanup(tenant)
