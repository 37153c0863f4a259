"""Live: backups (`backup`, `backup verify`, `restore`, `backup schedule`) on the real LXD.

One tenant goes up once for the module, in a root-owned dir of this file's own under /srv
(bundles there too). Rows, keys and objects are written through the .env's ports, and the
backup is taken while a writer keeps inserting rows; the tests then run in file order on
that one bundle: its files and permissions, `verify`, a changed byte (refused, naming the
file), a restore refused into the tenant that holds data and forced (a `before-restore-...`
snapshot kept), the cron schedule, and last `destroy --purge-data --yes` followed by restores
into the fresh tenant and into a second new one, read back with psycopg, valkey and boto3
through the credentials in the restored .env. Runs on the real LXD only (see test_live.py).
"""
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from test_live import ROOT, botlxc, srv_dir, cleanup, instances, real_lxd  # noqa: F401
from test_live_services import read_env, s3

pytestmark = pytest.mark.live
psycopg = pytest.importorskip("psycopg")
valkey = pytest.importorskip("valkey")
pytest.importorskip("boto3")

COMPONENTS = ("tables", "drive", "cache")
BUNDLE_FILES = sorted(["%s.%s" % (c, kind) for c in COMPONENTS for kind in ("tar", "secrets")]
                      + ["manifest.json", "SHA256SUMS"])
BUCKET = "bkt"
NOTES = [(1, "first"), (2, "second"), (3, "third")]
KEYS = {"bk:one": b"1", "bk:two": b"2", "bk:three": b"3"}
BLOB = os.urandom(200 * 1024)
OBJECTS = {"a.txt": b"alpha", "dir/blob.bin": BLOB, "c.txt": b"gamma"}
OLD = "20200101-000000"  # the stamp of the fake bundles


# ----------------------------------------------------------------------------- helpers


def run(*args):
    """botlxc as cron or CI runs it (stdin not a terminal), never checked."""
    return subprocess.run([sys.executable, str(ROOT / "botlxc.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)


def pg(env):
    return psycopg.connect(env["DATABASE_URL"], connect_timeout=10, autocommit=True)


def kv(env):
    return valkey.Valkey.from_url(env["CACHE_URL"], socket_timeout=10)


def notes(env):
    with pg(env) as conn:
        return conn.execute("select id, body from notes order by id").fetchall()


def ticks(env):
    with pg(env) as conn:
        return conn.execute("select count(*) from ticks").fetchone()[0]


def keys(env):
    client = kv(env)
    return {k.decode(): client.get(k) for k in sorted(client.scan_iter(match="bk:*"))}


def objects(env):
    client = s3(env)
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in listed}


def data(env):
    """Everything the tests wrote, read back through the .env's ports and credentials."""
    return notes(env), ticks(env), keys(env), objects(env)


def snapshots(tenant):
    return json.loads(botlxc("snapshot", "list", "--tenant", tenant, "--json").stdout)


def credentials(env):
    db, cache = urlparse(env["DATABASE_URL"]), urlparse(env["CACHE_URL"])
    return (db.username, db.password, db.path, cache.username, cache.password,
            env["DRIVE_ACCESSKEY"], env["DRIVE_SECRET"])


def ports(env):
    return {urlparse(env[key]).port for key in ("DATABASE_URL", "DRIVE_SERVER", "CACHE_URL")}


def manifest_of(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def world(tenant, stack):
    """What a refused restore must leave as it was: the containers (config, devices, state,
    LXD snapshots), the .env, botlxc's snapshots and the data itself."""
    found = {}
    for name, inst in instances(tenant).items():
        config = {k: v for k, v in inst["config"].items() if not k.startswith("volatile.")}
        found[name] = (inst["status"], config, inst["devices"],
                       sorted(s["name"] for s in inst.get("snapshots") or []))
    env = read_env(stack)
    return found, (stack / ".env").read_text(), sorted(snapshots(tenant)), data(env)


def healthy(tenant):
    rows = json.loads(botlxc("status", "--tenant", tenant, "--json").stdout)
    return {r["component"]: r["health"] for r in rows}


def flip_byte(path):
    """Change exactly one byte in the middle of the file (its size stays)."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


class Writer(threading.Thread):
    """Keeps inserting rows into ticks (autocommit, one row a statement) until stopped."""

    def __init__(self, env):
        super().__init__(daemon=True)
        self.env, self.stop, self.inserted, self.error = env, threading.Event(), 0, None

    def run(self):
        try:
            with pg(self.env) as conn:
                while not self.stop.is_set():
                    conn.execute("insert into ticks (at) values (clock_timestamp())")
                    self.inserted += 1
                    time.sleep(0.005)
        except Exception as exc:  # reported by the test
            self.error = exc


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def area():
    """A root-owned dir of this module's own under /srv (stacks and bundles), removed last."""
    with srv_dir("bkt") as path:
        yield path


@pytest.fixture(scope="module")
def tenant(area):
    """The tenant (bkt + 4 hex) brought up once; its second name (+ "2") for the restore
    into another new tenant; both destroyed at the end (at once), schedule and log files
    removed."""
    name = "bkt" + secrets.token_hex(2)
    other = name + "2"

    def remove(each):
        cleanup(each)
        for kind in ("backup", "snapshot"):
            for path in (Path("/etc/cron.d/botlxc-%s-%s" % (kind, each)),
                         Path("/var/log/botlxc-%s-%s.log" % (kind, each))):
                if path.exists():
                    path.unlink()

    try:
        botlxc("up", "--tenant", name, "--stack-dir", str(area / "stack-a"))
        yield name, area / "stack-a"
    finally:
        threads = [threading.Thread(target=remove, args=(each,)) for each in (name, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


@pytest.fixture(scope="module")
def taken(tenant, area):
    """The data written, then `backup --keep 1` into <area>/bundles while a writer inserts
    rows; beside it a fake older bundle of this tenant and one of tenant <name>-y."""
    name, stack = tenant
    env = read_env(stack)
    with pg(env) as conn:
        conn.execute("create table notes (id int primary key, body text)")
        conn.execute("create table ticks (id bigserial primary key, at timestamptz)")
        for row in NOTES:
            conn.execute("insert into notes values (%s, %s)", row)
    client = kv(env)
    for key, value in KEYS.items():
        assert client.set(key, value)
    drive = s3(env)
    drive.create_bucket(Bucket=BUCKET)
    for key, body in OBJECTS.items():
        drive.put_object(Bucket=BUCKET, Key=key, Body=body)

    bundles = area / "bundles"
    bundles.mkdir(mode=0o700)
    (bundles / ("%s-%s" % (name, OLD))).mkdir()  # an older bundle of this tenant
    (bundles / ("%s-y-%s" % (name, OLD))).mkdir()  # tenant <name>-y's: not this tenant's

    writer = Writer(env)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while writer.inserted < 20 and writer.error is None:
            assert time.monotonic() < deadline, "the writer wrote nothing"
            time.sleep(0.05)
        before = ticks(env)
        proc = botlxc("backup", "--tenant", name, "--to", str(bundles), "--keep", "1")
        after = ticks(env)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None, writer.error
    bundle = Path(proc.stdout.strip().splitlines()[-1])
    return dict(bundle=bundle, bundles=bundles, proc=proc, before=before, after=after,
                env=(stack / ".env").read_text(), ticks=ticks(env))


# ----------------------------------------------------------------------------- 1. backup


def test_01_backup_while_writing_keeps_one_bundle_of_this_tenant(tenant, taken):
    name, _ = tenant
    bundle, bundles = taken["bundle"], taken["bundles"]
    assert bundle.parent == bundles and bundle.is_dir(), taken["proc"].stdout
    assert bundle.name.startswith(name + "-")
    assert len(bundle.name) == len(name) + 1 + len(OLD)
    # --keep 1: the older bundle of this tenant is gone, <name>-y's is untouched
    assert sorted(os.listdir(bundles)) == sorted([bundle.name, "%s-y-%s" % (name, OLD)])
    assert not list(bundles.glob("*.partial"))

    counts = {c: info["counts"] for c, info in manifest_of(bundle)["components"].items()}
    assert sorted(counts) == sorted(COMPONENTS)
    assert counts["tables"]["tables"] == 2, counts
    assert counts["tables"]["rows:public.notes"] == len(NOTES), counts
    assert counts["cache"] == {"keys:db0": len(KEYS)}, counts
    assert counts["drive"] == {"buckets": 1, "objects": len(OBJECTS)}, counts
    # the dump's snapshot was taken while the writer wrote: after it started, before it ended
    taken_rows = counts["tables"]["rows:public.ticks"]
    assert taken["before"] < taken_rows < taken["after"], (taken["before"], taken_rows,
                                                           taken["after"])


def test_02_bundle_is_roots_private_and_summed(taken):
    bundle = taken["bundle"]
    st = os.lstat(bundle)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert sorted(os.listdir(bundle)) == BUNDLE_FILES
    for entry in BUNDLE_FILES:
        st = os.lstat(bundle / entry)
        assert stat.S_ISREG(st.st_mode), entry
        assert stat.S_IMODE(st.st_mode) == 0o600, (entry, oct(st.st_mode))
        assert st.st_uid == 0, entry
    done = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=bundle,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = sorted(line.split("  ", 1)[1] for line in
                    (bundle / "SHA256SUMS").read_text().splitlines())
    assert listed == sorted(set(BUNDLE_FILES) - {"SHA256SUMS"})
    manifest = manifest_of(bundle)
    assert manifest["tenant"] == bundle.name.rsplit("-", 2)[0]
    unsummed = {"SHA256SUMS", "manifest.json"}
    assert sorted(manifest["files"]) == sorted(set(BUNDLE_FILES) - unsummed)


def test_03_verify_test_restores_and_leaves_no_scratch_db(tenant, taken):
    name, stack = tenant
    proc = botlxc("backup", "verify", str(taken["bundle"]), "--tenant", name)
    assert "tables" in proc.stderr, proc.stderr
    with pg(read_env(stack)) as conn:
        left = conn.execute("select datname from pg_database where datname like "
                            "'botlxc\\_verify%'").fetchall()
    assert left == []


@pytest.mark.parametrize("changed", ["tables.tar", "cache.secrets", "manifest.json"])
def test_04_a_changed_byte_is_refused_naming_the_file(tenant, taken, area, changed):
    name, stack = tenant
    copy = area / ("changed-" + changed) / taken["bundle"].name
    copy.parent.mkdir(mode=0o700)
    shutil.copytree(taken["bundle"], copy)
    flip_byte(copy / changed)
    before = world(name, stack)

    proc = run("backup", "verify", str(copy), "--tenant", name)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert changed in proc.stderr, proc.stderr

    proc = run("restore", str(copy), "--tenant", name, "--force")
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert changed in proc.stderr, proc.stderr
    assert world(name, stack) == before  # no before-restore snapshot, nothing replaced


# ----------------------------------------------------------------------------- 2. restore


def test_05_restore_into_a_tenant_with_data_needs_force(tenant, taken):
    name, stack = tenant
    env = read_env(stack)
    # written after the backup: what a restore replaces
    with pg(env) as conn:
        conn.execute("insert into notes values (4, 'after the backup')")
    assert kv(env).set("bk:later", "x")
    s3(env).put_object(Bucket=BUCKET, Key="later.txt", Body=b"later")
    before = world(name, stack)

    proc = run("restore", str(taken["bundle"]))  # into the bundle's own tenant
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "holds data" in proc.stderr and "--force" in proc.stderr, proc.stderr
    assert world(name, stack) == before

    botlxc("restore", str(taken["bundle"]), "--tenant", name, "--force")
    counts = manifest_of(taken["bundle"])["components"]["tables"]["counts"]
    assert data(env) == (NOTES, counts["rows:public.ticks"], KEYS, OBJECTS)
    assert (stack / ".env").read_text() == taken["env"]
    assert healthy(name) == {c: "healthy" for c in COMPONENTS}
    kept = [n for n in snapshots(name) if n.startswith("before-restore-")]
    assert len(kept) == 1, snapshots(name)
    row = snapshots(name)[kept[0]]
    assert sorted(row["containers"]) == sorted(row["data"]) == sorted(COMPONENTS)


def test_06_schedule_is_a_cron_line_shown_by_status(tenant, taken):
    name, _ = tenant
    cron = Path("/etc/cron.d/botlxc-backup-" + name)
    bundles = str(taken["bundles"])
    botlxc("backup", "schedule", "--tenant", name, "--every", "daily", "--keep", "3",
           "--to", bundles)
    assert stat.S_IMODE(cron.stat().st_mode) == 0o644 and cron.stat().st_uid == 0
    lines = [x for x in cron.read_text().splitlines() if x and not x.startswith("#")]
    assert len(lines) == 1, cron.read_text()
    assert lines[0].startswith("17 3 * * * root "), lines[0]
    assert lines[0].endswith(" >>/var/log/botlxc-backup-%s.log 2>&1" % name), lines[0]
    command = lines[0].split(" root ", 1)[1].split(" >>", 1)[0]
    assert command == "%s %s backup --tenant %s --keep 3 --to %s" % (
        sys.executable, ROOT / "botlxc.py", name, bundles), command
    shown = [x for x in botlxc("status", "--tenant", name).stdout.splitlines()
             if x.startswith("backups: ")]
    assert shown == ["backups: daily, keeping 3 (%s)" % cron], shown

    botlxc("backup", "schedule", "--tenant", name, "--off")
    assert not cron.exists()
    assert "backups:" not in botlxc("status", "--tenant", name).stdout


@pytest.fixture(scope="module")
def restored(tenant, taken, area):
    """`destroy --purge-data --yes`, then the bundle restored at once into the fresh tenant
    (the bundle's own, no -t) and into another new one (-t <name>2): each is brought up."""
    name, stack = tenant
    old_env = read_env(stack)
    gone = botlxc("destroy", "--tenant", name, "--purge-data", "--yes")
    left = (instances(name), stack.exists())
    fresh, other = area / "stack-fresh", area / "stack-other"
    bundle = str(taken["bundle"])
    procs = [subprocess.Popen([sys.executable, str(ROOT / "botlxc.py"), *argv], cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for argv in (["restore", bundle, "--stack-dir", str(fresh)],
                          ["restore", bundle, "--tenant", name + "2", "--stack-dir", str(other)])]
    outputs = [proc.communicate() for proc in procs]
    done = [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs)]
    return dict(old_env=old_env, gone=gone, left=left, fresh=fresh, other=other, done=done)


def test_07_destroyed_tenant_comes_back_from_the_bundle(tenant, taken, restored):
    name, _ = tenant
    assert restored["left"] == ({}, False), restored["gone"].stderr
    assert restored["done"][0][0] == 0, restored["done"][0]
    assert sorted(instances(name)) == sorted("%s-%s" % (name, c) for c in COMPONENTS)
    assert healthy(name) == {c: "healthy" for c in COMPONENTS}
    fresh = restored["fresh"]
    env = read_env(fresh)
    assert credentials(env) == credentials(restored["old_env"])
    counts = manifest_of(taken["bundle"])["components"]["tables"]["counts"]
    # through the restored .env: psycopg, valkey, boto3 from the host
    assert data(env) == (NOTES, counts["rows:public.ticks"], KEYS, OBJECTS)
    assert stat.S_IMODE((fresh / ".env").stat().st_mode) == 0o600


def test_08_restore_into_another_new_tenant_gets_its_own_ports(tenant, taken, restored):
    name, _ = tenant
    other = name + "2"
    assert restored["done"][1][0] == 0, restored["done"][1]
    env, other_env = read_env(restored["fresh"]), read_env(restored["other"])
    assert sorted(instances(other)) == sorted("%s-%s" % (other, c) for c in COMPONENTS)
    assert healthy(other) == {c: "healthy" for c in COMPONENTS}
    assert not ports(other_env) & ports(env), (ports(other_env), ports(env))
    assert credentials(other_env) == credentials(env)
    counts = manifest_of(taken["bundle"])["components"]["tables"]["counts"]
    assert data(other_env) == (NOTES, counts["rows:public.ticks"], KEYS, OBJECTS)
    # the two are apart: a row written into the new one is not in the first
    with pg(other_env) as conn:
        conn.execute("insert into notes values (5, 'only in %s')" % other)
    assert notes(env) == NOTES
    assert healthy(name) == {c: "healthy" for c in COMPONENTS}
