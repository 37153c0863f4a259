"""Live: the day-2 commands (issue 7) on the real LXD, checked with real clients.

One tenant goes up with its services and serves every test in order; its clone is the
second tenant (made by `clone`, not by `up`) and is the one `destroy` takes apart. The
tests run in file order and build on each other (row 1 written by the snapshot test is
what the clone must serve, the clone's port is the one `ports set` must refuse). Runs on
the real LXD only (see test_live.py for the skip/fail rule); no default port is assumed.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from test_live import (ROOT, botlxc, cleanup, instances, lxc, make_tenant,  # noqa: F401
                       real_lxd)
from test_live_services import read_env, s3

pytestmark = pytest.mark.live
psycopg = pytest.importorskip("psycopg")
valkey = pytest.importorskip("valkey")
pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402

COMPONENTS = ("tables", "drive", "cache")
BUCKET = "day2"


# ----------------------------------------------------------------------------- helpers


def run(*args, cwd=None):
    """botlxc with stdin that is not a terminal (as in cron or CI), never checked."""
    return subprocess.run([sys.executable, str(ROOT / "botlxc.py"), *args],
                          capture_output=True, text=True, cwd=cwd or ROOT,
                          stdin=subprocess.DEVNULL)


def port_of(env, key):
    return urlparse(env[key]).port


def pg(env, port=None, password=None):
    url = urlparse(env["DATABASE_URL"])
    return psycopg.connect(host="127.0.0.1", port=port or url.port, user=url.username,
                           password=password or url.password, dbname=url.path.lstrip("/"),
                           connect_timeout=10)


def kv(env, port=None, password=None):
    url = urlparse(env["CACHE_URL"])
    return valkey.Valkey(host="127.0.0.1", port=port or url.port, username=url.username,
                         password=password or url.password, socket_timeout=10)


def notes(env):
    with pg(env) as conn:
        return conn.execute("select id, body from notes order by id").fetchall()


def objects(env):
    listed = s3(env).list_objects_v2(Bucket=BUCKET)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def status(tenant):
    rows = json.loads(botlxc("status", "--tenant", tenant, "--json").stdout)
    return {r["component"]: r["health"] for r in rows}


def snapshots(tenant):
    return json.loads(botlxc("snapshot", "list", "--tenant", tenant, "--json").stdout)


def in_container(name, *argv):
    return lxc("exec", name, "--", *argv).stdout.strip()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bad_input(proc):
    """Exit 2 with exactly one line on stderr (and nothing on stdout)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == "", proc.stdout


def world(tenant, stack):
    """Everything a refused command must leave as it was: the tenant's containers (config,
    devices, state, LXD snapshots), .env, and botlxc's state dir (limits, snapshot copies)."""
    found = {}
    for name, inst in instances(tenant).items():
        config = {k: v for k, v in inst["config"].items() if not k.startswith("volatile.")}
        found[name] = (inst["status"], config, inst["devices"],
                       sorted(s["name"] for s in inst.get("snapshots") or []))
    state = stack / ".botlxc"
    limits = state / "limits.json"
    copies = state / "snapshots"
    return (found, (stack / ".env").read_text(),
            limits.read_text() if limits.exists() else None,
            sorted(os.listdir(copies)) if copies.exists() else [])


# ----------------------------------------------------------------------------- tenants


@pytest.fixture(scope="module")
def tenant(tmp_path_factory):
    name, stack = make_tenant(tmp_path_factory, "day")
    try:
        botlxc("up", "--tenant", name, "--stack-dir", str(stack))
        yield name, stack
    finally:
        cleanup(name)


@pytest.fixture(scope="module")
def clone(tenant, tmp_path_factory):
    """The tenant cloned (after the snapshot test wrote row 1), into the default stack
    beside the original's: <original stack's parent>/botserver-stack-NEW."""
    name, stack = tenant
    new, _ = make_tenant(tmp_path_factory, "dcl")
    try:
        proc = botlxc("clone", "--to", new, "--tenant", name)
        yield new, stack.parent / ("botserver-stack-" + new), proc
    finally:
        cleanup(new)


# ----------------------------------------------------------------------------- 1. snapshots


def test_01_snapshot_restore_brings_back_exactly_the_data(tenant):
    name, stack = tenant
    env = read_env(stack)
    with pg(env) as conn:
        conn.execute("create table notes (id int primary key, body text)")
        conn.execute("insert into notes values (1, 'first')")
    assert kv(env).set("day2:first", "1")
    s3(env).create_bucket(Bucket=BUCKET)
    s3(env).put_object(Bucket=BUCKET, Key="first.txt", Body=b"first")

    assert botlxc("snapshot", "create", "s1", "--tenant", name).stdout.strip() == "s1"
    listed = snapshots(name)["s1"]
    assert sorted(listed["containers"]) == sorted(COMPONENTS)
    assert sorted(listed["data"]) == sorted(COMPONENTS)
    for comp in COMPONENTS:
        assert (stack / ".botlxc" / "snapshots" / "s1" / comp / "data").is_dir()

    with pg(env) as conn:
        conn.execute("insert into notes values (2, 'second')")
    assert kv(env).set("day2:second", "2")
    s3(env).put_object(Bucket=BUCKET, Key="second.txt", Body=b"second")
    assert notes(env) == [(1, "first"), (2, "second")]

    env_text = (stack / ".env").read_text()
    botlxc("snapshot", "restore", "s1", "--tenant", name)
    assert (stack / ".env").read_text() == env_text
    assert status(name) == {c: "healthy" for c in COMPONENTS}
    assert notes(env) == [(1, "first")]
    client = kv(env)
    assert client.get("day2:first") == b"1"
    assert client.get("day2:second") is None
    assert objects(env) == ["first.txt"]
    assert s3(env).get_object(Bucket=BUCKET, Key="first.txt")["Body"].read() == b"first"
    with pytest.raises(ClientError):
        s3(env).get_object(Bucket=BUCKET, Key="second.txt")

    botlxc("snapshot", "delete", "s1", "--tenant", name)
    assert "s1" not in snapshots(name)
    assert not (stack / ".botlxc" / "snapshots" / "s1").exists()
    for inst in instances(name).values():
        assert "s1" not in [s["name"] for s in inst.get("snapshots") or []]


# ----------------------------------------------------------------------------- 2. clone


def test_02_clone_serves_its_own_copy_with_its_own_credentials(tenant, clone):
    name, stack = tenant
    new, new_stack, _ = clone
    env, new_env = read_env(stack), read_env(new_stack)
    assert sorted(c for c in status(new)) == sorted(COMPONENTS)
    assert set(status(new).values()) == {"healthy"}
    for key in ("DATABASE_URL", "DRIVE_SERVER", "CACHE_URL"):
        assert port_of(new_env, key) != port_of(env, key), key
    for key in ("DRIVE_ACCESSKEY", "DRIVE_SECRET"):
        assert new_env[key] != env[key], key
    assert urlparse(new_env["DATABASE_URL"]).password != urlparse(env["DATABASE_URL"]).password
    assert urlparse(new_env["CACHE_URL"]).password != urlparse(env["CACHE_URL"]).password

    # its own copy, through its own ports and credentials
    assert notes(new_env) == [(1, "first")]
    assert kv(new_env).get("day2:first") == b"1"
    assert objects(new_env) == ["first.txt"]

    # the original's credentials do not open the clone
    with pytest.raises(psycopg.OperationalError):
        pg(new_env, password=urlparse(env["DATABASE_URL"]).password).close()
    with pytest.raises(valkey.exceptions.AuthenticationError):
        kv(new_env, password=urlparse(env["CACHE_URL"]).password).get("day2:first")
    with pytest.raises(ClientError):
        s3(dict(env, DRIVE_SERVER=new_env["DRIVE_SERVER"])).list_buckets()

    # writing into the clone leaves the original as it was
    with pg(new_env) as conn:
        conn.execute("insert into notes values (3, 'clone only')")
    assert kv(new_env).set("day2:clone", "c")
    s3(new_env).put_object(Bucket=BUCKET, Key="clone.txt", Body=b"clone")
    assert notes(new_env) == [(1, "first"), (3, "clone only")]
    assert notes(env) == [(1, "first")]
    assert kv(env).get("day2:clone") is None
    assert objects(env) == ["first.txt"]
    assert objects(new_env) == ["clone.txt", "first.txt"]

    # the snapshot the clone was made from is not left behind on the original
    assert not [n for n in snapshots(name) if n.startswith("clone-")], snapshots(name)
    for inst in instances(name).values():
        assert not [s["name"] for s in inst.get("snapshots") or []], inst["name"]


# ----------------------------------------------------------------------------- 3. limits


def test_03_limits_are_live_inside_and_kept_by_down_up(tenant):
    name, stack = tenant
    cache = name + "-cache"
    botlxc("limits", "cache", "--tenant", name, "--memory", "256MB", "--cpu", "1")

    def applied():
        assert in_container(cache, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes") == \
            "256000000"
        assert in_container(cache, "nproc") == "1"
        shown = json.loads(botlxc("limits", "cache", "--tenant", name, "--json").stdout)
        assert shown["memory"] == "256MB" and shown["cpu"] == "1", shown

    applied()
    botlxc("down", "--tenant", name, "-c", "cache")
    assert sorted(instances(name)) == [name + "-drive", name + "-tables"]
    botlxc("up", "--tenant", name, "-c", "cache")
    applied()
    assert status(name) == {c: "healthy" for c in COMPONENTS}
    assert kv(read_env(stack)).get("day2:first") == b"1"  # the data stayed on the host


def test_04_bad_input_is_refused_and_changes_nothing(tenant):
    name, stack = tenant
    before = world(name, stack)
    refused = [
        ("limits", "cache", "--memory", "-1GB"),
        ("limits", "cache", "--memory", "lots"),
        ("limits", "cache", "--cpu", "0"),
        ("limits", "cache", "--cpu", "-1"),
        ("limits", "nosuch", "--memory", "256MB"),
        ("snapshot", "create", "a/b"),
        ("snapshot", "create", "a b"),
        ("snapshot", "create", "s2", "-c", "nosuch"),
        ("snapshot", "restore", "../s1"),
        ("snapshot", "delete", "a b"),
        ("snapshot", "delete", "never-taken"),
        ("ports", "set", "cache=0"),
        ("ports", "set", "cache=65536"),
        ("ports", "set", "cache=http"),
        ("ports", "set", "nosuch=15000"),
        ("exec", "nosuch", "--", "true"),
        ("logs", "nosuch"),
        ("info", "nosuch"),
        ("update", "-c", "nosuch"),
        ("restart", "-c", "nosuch"),
        ("clone", "--to", "Not_A_Tenant"),
        ("clone", "--to", name),
    ]
    for argv in refused:
        proc = run(*argv, "--tenant", name)
        bad_input(proc)
    assert world(name, stack) == before


# ----------------------------------------------------------------------------- 4. ports


def test_05_ports_set_moves_the_service_and_env(tenant, clone):
    name, stack = tenant
    env = read_env(stack)
    old = port_of(env, "DATABASE_URL")
    new = free_port()
    botlxc("ports", "set", "tables=%d" % new, "--tenant", name)
    env = read_env(stack)
    assert port_of(env, "DATABASE_URL") == new
    rows = json.loads(botlxc("ports", "--tenant", name, "--json").stdout)
    assert [r["host_port"] for r in rows if r["component"] == "tables"] == [new]
    assert notes(env) == [(1, "first")]  # psycopg on the new port
    with pytest.raises(psycopg.OperationalError):
        pg(env, port=old).close()

    # a port a host process listens on: refused, naming the holder
    before = world(name, stack)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        held = holder.getsockname()[1]
        proc = run("ports", "set", "cache=%d" % held, "--tenant", name)
    bad_input(proc)
    assert str(held) in proc.stderr and "pid %d" % os.getpid() in proc.stderr, proc.stderr
    # a port another tenant's proxy holds (the clone's), and one of this tenant's own
    new_tenant, new_stack, _ = clone
    theirs = port_of(read_env(new_stack), "CACHE_URL")
    proc = run("ports", "set", "cache=%d" % theirs, "--tenant", name)
    bad_input(proc)
    assert str(theirs) in proc.stderr and new_tenant + "-cache" in proc.stderr, proc.stderr
    proc = run("ports", "set", "cache=%d" % new, "--tenant", name)
    bad_input(proc)
    assert "tables" in proc.stderr, proc.stderr
    assert world(name, stack) == before


# ----------------------------------------------------------------------------- 7. read-outs


def test_06_exec_logs_usage_info(tenant):
    name, stack = tenant
    env = read_env(stack)
    assert run("exec", "cache", "--tenant", name, "--", "sh", "-c", "exit 7").returncode == 7
    proc = run("exec", "cache", "--tenant", name, "--", "sh", "-c", "echo out; echo err >&2")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "out\n", "err\n")

    logs = botlxc("logs", "cache", "--tenant", name, "-n", "200").stdout
    assert "botlxc cache: Valkey" in logs, logs  # the unit's journal (its Description)
    assert "Ready to accept connections" in logs, logs  # and valkey.log on the logs mount

    rows = {r["component"]: r for r in json.loads(
        botlxc("usage", "--tenant", name, "--json").stdout)}
    assert sorted(rows) == sorted(COMPONENTS)
    for comp, row in rows.items():
        assert row["name"] == "%s-%s" % (name, comp)
        assert row["state"] == "RUNNING"
        assert row["memory_bytes"] > 0 and row["processes"] > 0, row
        assert row["cpu_seconds"] >= 0
        assert set(row["host_dirs_bytes"]) == {"data", "conf", "logs"}
        assert row["host_dirs_bytes"]["data"] > 0, row
    assert rows["tables"]["host_dirs_bytes"]["data"] > 10 * 1024 * 1024  # a PostgreSQL cluster
    assert rows["cache"]["limits"]["memory"] == "256MB"

    info = json.loads(botlxc("info", "cache", "--tenant", name, "--json").stdout)
    assert info["name"] == name + "-cache" and info["status"] == "Running"
    assert info["labels"]["tenant"] == name and info["labels"]["component"] == "cache"
    proxies = [d for d in info["devices"].values() if d["type"] == "proxy"]
    assert [p["listen"] for p in proxies] == ["tcp:127.0.0.1:%d" % port_of(env, "CACHE_URL")]
    assert info["devices"]["data"]["source"] == str(stack / "cache" / "data")
    inet = [a for a in info["network"]["eth0"]["addresses"] if a.count(".") == 3]
    assert inet, info["network"]
    ipv4 = next(r["ipv4"] for r in json.loads(botlxc("status", "--tenant", name, "--json")
                                              .stdout) if r["component"] == "cache")
    assert inet[0].split("/")[0] in ipv4
    assert info["config"]["security.protection.delete"] == "true"
    assert info["limits"]["cpu"] == "1"


def test_07_snapshot_schedule_is_a_cron_line_that_works(tenant):
    name, stack = tenant
    cron = Path("/etc/cron.d/botlxc-snapshot-" + name)
    try:
        botlxc("snapshot", "schedule", "--tenant", name, "--every", "daily", "--keep", "2")
        text = cron.read_text()
        assert oct(cron.stat().st_mode & 0o777) == "0o644"
        line = [x for x in text.splitlines() if x and not x.startswith("#")]
        assert len(line) == 1 and line[0].startswith("17 3 * * * root "), text
        assert "snapshot create --tenant %s --keep 2" % name in line[0]
        # the line's command, run as cron would (its PATH, from /), takes a snapshot
        command = line[0].split(" root ", 1)[1].split(" >>", 1)[0]
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd="/",
                              env={"PATH": "/usr/bin:/bin", "HOME": "/root"})
        assert done.returncode == 0, done.stderr
        auto = [n for n in snapshots(name) if n.startswith("auto-")]
        assert len(auto) == 1, snapshots(name)
        row = snapshots(name)[auto[0]]
        assert sorted(row["containers"]) == sorted(row["data"]) == sorted(COMPONENTS)
        botlxc("snapshot", "delete", auto[0], "--tenant", name)

        botlxc("snapshot", "schedule", "--tenant", name, "--off")
        assert not cron.exists()
    finally:
        if cron.exists():
            run("snapshot", "schedule", "--tenant", name, "--off")


# ----------------------------------------------------------------------------- 5. update


def test_08_failed_update_rolls_back(tenant):
    name, stack = tenant
    env = read_env(stack)
    cache = name + "-cache"
    assert kv(env).set("day2:before-update", "kept")
    # a plain update first: upgraded (or nothing to upgrade), restarted, healthy
    botlxc("update", "-c", "cache", "--tenant", name)
    assert status(name)["cache"] == "healthy"
    assert kv(env).get("day2:before-update") == b"kept"
    assert len([n for n in snapshots(name) if n.startswith("pre-update-")]) == 1

    hook = ('APT::Update::Post-Invoke '
            '{"echo bogus-directive yes >> /opt/gbo/conf/valkey.conf";};')
    lxc("exec", cache, "--", "sh", "-c", "cat > /etc/apt/apt.conf.d/99break", input=hook + "\n")
    try:
        proc = run("update", "-c", "cache", "--tenant", name)
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        assert "rolled back" in proc.stderr and name + "-cache" in proc.stderr, proc.stderr
        assert status(name) == {c: "healthy" for c in COMPONENTS}
        assert kv(env).get("day2:before-update") == b"kept"
        conf = lxc("exec", cache, "--", "grep", "-c", "bogus-directive",
                   "/opt/gbo/conf/valkey.conf", check=False)
        assert conf.stdout.strip() == "0", conf.stdout
        assert len([n for n in snapshots(name) if n.startswith("pre-update-")]) == 2
    finally:
        lxc("exec", cache, "--", "rm", "-f", "/etc/apt/apt.conf.d/99break", check=False)


# ----------------------------------------------------------------------------- 6. destroy


def test_09_destroy_keeps_data_unless_purged(clone):
    new, new_stack, _ = clone
    tables = new + "-tables"
    proc = lxc("delete", "--force", tables, check=False)
    assert proc.returncode != 0 and "protected" in proc.stderr.lower(), proc.stderr
    assert tables in instances(new)

    everything = sorted(str(p) for p in new_stack.rglob("*"))
    before = world(new, new_stack)
    bad_input(run("destroy", "--tenant", new, "--purge-data"))
    assert world(new, new_stack) == before
    assert sorted(str(p) for p in new_stack.rglob("*")) == everything

    proc = botlxc("destroy", "--tenant", new)
    assert instances(new) == {}
    assert str(new_stack) in proc.stderr
    for comp in COMPONENTS:
        assert any((new_stack / comp / "data").iterdir()), comp
    assert (new_stack / ".env").exists()
    assert (new_stack / "tables" / "data" / "pgdata" / "PG_VERSION").exists()

    # its containers gone, the stack is found where a tenant's stack is by default
    botlxc("destroy", "--tenant", new, "--purge-data", "--yes", cwd=new_stack.parent)
    assert not new_stack.exists()


def test_10_destroy_purge_with_yes_removes_everything(tenant):
    name, stack = tenant
    botlxc("snapshot", "schedule", "--tenant", name, "--every", "weekly", "--keep", "1")
    proc = botlxc("destroy", "--tenant", name, "--purge-data", "--yes")
    assert "data is gone" in proc.stderr
    assert instances(name) == {}
    assert not stack.exists()
    assert not Path("/etc/cron.d/botlxc-snapshot-" + name).exists()
