"""Live: doctor names each trouble broken on purpose, and --fix brings back what it says.

Last of the live files (it stops the LXD daemon once, and starts it again with --fix).
"""
import json
import os
import socket
import subprocess
import time

import pytest

from test_live import botlxc, cleanup, lxc, make_tenant, real_lxd  # noqa: F401

pytestmark = pytest.mark.live


def doctor(tenant, *extra):
    proc = botlxc("doctor", "-t", tenant, "--json", *extra, check=False)
    return proc.returncode, {c["name"]: c for c in json.loads(proc.stdout or "[]")}, proc.stderr


@pytest.fixture(scope="module")
def tenant(tmp_path_factory):
    name, stack = make_tenant(tmp_path_factory, "doc")
    try:
        botlxc("up", "-t", name, "--stack-dir", str(stack), "-c", "cache")
        yield name
    finally:
        cleanup(name)


def test_a_healthy_tenant_passes(tenant):
    code, checks, _ = doctor(tenant)
    assert code == 0, {k: v for k, v in checks.items() if v["status"] != "ok"}
    assert checks[tenant + "-cache-service"]["status"] == "ok"


def test_a_stopped_unit_is_named_with_its_journal_and_fixed(tenant):
    lxc("exec", tenant + "-cache", "--", "systemctl", "stop", "cache")
    code, checks, err = doctor(tenant)
    assert code == 1 and "failed: %s-cache-service" % tenant in err
    found = checks[tenant + "-cache-service"]
    assert found["status"] == "fail" and "journal:" in found["evidence"]
    assert found["fix"].startswith("botlxc restart --tenant %s -c cache" % tenant)
    code, checks, err = doctor(tenant, "--fix")
    assert code == 0 and checks[tenant + "-cache-service"]["status"] == "ok", err


def test_a_container_without_its_nic_is_named_and_fixed(tenant):
    name = tenant + "-cache"
    lxc("config", "device", "remove", name, "eth0")
    lxc("config", "device", "add", name, "eth0", "none")  # masks the profile's NIC too
    lxc("restart", name, "--force")
    code, checks, _ = doctor(tenant)
    assert code == 1
    assert checks[name + "-address"]["status"] == "fail"
    assert checks["isolation"]["status"] == "warn"
    code, checks, err = doctor(tenant, "--fix")
    assert code == 0, err
    assert checks[name + "-address"]["status"] == "ok"
    assert checks["isolation"]["status"] == "ok"


def test_a_port_taken_while_the_container_was_down_names_the_holder(tenant):
    name = tenant + "-cache"
    port = json.loads(botlxc("ports", "-t", tenant, "--json").stdout)[0]["host_port"]
    botlxc("stop", "-t", tenant)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        code, checks, _ = doctor(tenant)
        found = checks["port-cache.valkey"]
        assert found["status"] == "fail"
        assert found["evidence"].startswith("%d is held by python" % port)
        assert "(pid %d)" % os.getpid() in found["evidence"]
        assert "botlxc ports set cache.valkey=PORT" in found["fix"]
        assert checks[name]["status"] == "fail"  # stopped
    finally:
        holder.close()
    code, checks, err = doctor(tenant, "--fix")  # starts it again
    assert code == 0, err


def test_zz_lxd_stopped_is_named_and_started_again(tenant):
    pid = subprocess.run(["pgrep", "-o", "-x", "lxd"], capture_output=True,
                         text=True).stdout.strip()
    if not pid or os.path.exists("/run/systemd/system"):
        pytest.skip("this test stops a background LXD daemon (no systemd)")
    os.kill(int(pid), 15)  # SIGTERM: the daemon goes, its containers keep running
    deadline = time.monotonic() + 60
    while lxc("query", "/1.0", check=False).returncode == 0:
        assert time.monotonic() < deadline, "LXD did not stop"
        time.sleep(0.5)
    try:
        code, checks, _ = doctor(tenant)
        assert code == 1 and checks["lxd-running"]["status"] == "fail"
        assert "botlxc host setup" in checks["lxd-running"]["fix"]
        code, checks, err = doctor(tenant, "--fix")
        assert code == 0, err
    finally:
        if lxc("query", "/1.0", check=False).returncode != 0:
            botlxc("host", "setup", check=False)
    assert lxc("query", "/1.0").returncode == 0
