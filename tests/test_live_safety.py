"""Live: root beside untrusted containers (issue 6), on the real LXD.

What a container's root plants in its mounted dirs never reaches the host; a stack path
someone could redirect, or another tenant's stack, is refused; a copy with a tenant's labels
is not the tenant's; `up` repairs a broken service; a killed or interrupted cold `up`
converges on the next run; tenants started together get distinct ports.

Every botlxc run has a timeout (a hang fails the test, it never stalls CI); nothing asserts
how long anything took. Tenants are uniquely named and removed at the end, even on failure.
The file takes about 6.5 to 7.5 minutes on the project's 2-core machine, most of it the kill
matrix (seven cold PostgreSQL bring-ups).
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest

from test_live import ROOT, cleanup, instances, lxc, make_tenant, real_lxd  # noqa: F401
from test_live_services import read_env

pytestmark = pytest.mark.live
psycopg = pytest.importorskip("psycopg")
valkey = pytest.importorskip("valkey")

#: The most any botlxc run may take here; past it the run is killed and the test fails.
HANG = 600
SERVICES = ("tables", "cache")


# ----------------------------------------------------------------------------- helpers


def cli(*args, timeout=HANG):
    """Run botlxc as a user would; a run that does not finish fails the test."""
    argv = [sys.executable, str(ROOT / "botlxc.py"), *map(str, args)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail("botlxc %s did not finish within %d s (hung):\n%s" % (
            " ".join(map(str, args)), timeout, exc.stderr))


def ok(*args):
    proc = cli(*args)
    assert proc.returncode == 0, "botlxc %s -> exit %d\n%s%s" % (
        " ".join(map(str, args)), proc.returncode, proc.stdout, proc.stderr)
    return proc


def error_lines(proc):
    """What a refused run printed, without lock-wait notes (other runs may hold a lock)."""
    return [line for line in proc.stderr.splitlines()
            if line.strip() and not line.startswith("waiting for the ")]


def own_status(tenant):
    """status --json rows of the tenant's own containers, by component."""
    rows = json.loads(ok("status", "--tenant", tenant, "--json").stdout)
    return {r["component"]: r for r in rows if r["name"] == "%s-%s" % (tenant, r["component"])}


def assert_healthy(tenant, components):
    rows = own_status(tenant)
    assert {c: rows.get(c, {}).get("health") for c in components} == \
        {c: "healthy" for c in components}, rows


def lxc_instance(name):
    proc = subprocess.run(["lxc", "query", "/1.0/instances/" + name], capture_output=True,
                          text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def force_delete(name):
    """An instance botlxc made (or a copy of one) is delete-protected: lift it, delete."""
    lxc("config", "unset", name, "security.protection.delete", check=False)
    lxc("delete", "--force", name, check=False)


def inside(name, script, *args):
    """A shell script run as the container's root; $1.. are args."""
    return lxc("exec", name, "--", "sh", "-euc", script, "sh", *map(str, args))


def pg(stack):
    return psycopg.connect(read_env(stack)["DATABASE_URL"], connect_timeout=10, autocommit=True)


def fingerprint(path):
    st = os.lstat(path)
    return {"content": path.read_bytes(), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
            "gid": st.st_gid, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino}


# ----------------------------------------------------------------------------- host paths


def test_stack_path_with_a_symlink_is_refused(tmp_path_factory, tmp_path):
    tenant, _ = make_tenant(tmp_path_factory, "link")
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    stack = tmp_path / "link" / "stack"
    try:
        proc = cli("up", "--tenant", tenant, "--stack-dir", stack, "--containers-only")
        assert proc.returncode == 2, proc.stderr
        lines = error_lines(proc)
        assert len(lines) == 1 and "symbolic link" in lines[0], proc.stderr
        assert list(real.iterdir()) == []
        assert instances(tenant) == {}
    finally:
        cleanup(tenant)


def test_stack_in_a_world_writable_dir_is_refused(tmp_path_factory, tmp_path):
    tenant, _ = make_tenant(tmp_path_factory, "open")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by all, no sticky bit: anyone could plant a link
    try:
        proc = cli("up", "--tenant", tenant, "--stack-dir", shared / "stack",
                   "--containers-only")
        assert proc.returncode == 2, proc.stderr
        lines = error_lines(proc)
        assert len(lines) == 1 and str(shared) in lines[0], proc.stderr
        assert list(shared.iterdir()) == []
        assert instances(tenant) == {}
    finally:
        cleanup(tenant)


# ----------------------------------------------------------------------------- boundary


#: What the boundary tests hand to the next one (they share one tenant).
BOUNDARY = {}
CANARY_SECRETS = ("TABLES_PASSWORD=CanaryTablesPassword000000000001\n"
                  "CACHE_PASSWORD=CanaryCachePassword0000000000001\n")
OVERSIZED_SECRET = "OversizedButWellFormed0000000001"
UP_SERVICES = ("--component", "tables", "--component", "cache")


@pytest.fixture(scope="class")
def svc_tenant(tmp_path_factory):
    tenant, stack = make_tenant(tmp_path_factory, "safe")
    try:
        ok("up", "--tenant", tenant, "--stack-dir", stack, *UP_SERVICES)
        yield tenant, stack
    finally:
        cleanup(tenant)


class Canary:
    """A host file (shaped like a secrets file) and its dir, for planted links to aim at."""

    def __init__(self, base):
        self.dir = base / "canary"
        self.dir.mkdir()
        self.file = self.dir / "canary.env"
        self.file.write_text(CANARY_SECRETS)
        os.chmod(self.file, 0o640)
        self.new = self.dir / "planted-new"  # absent: a write through a link would make it
        self.profile_d = "/etc/profile.d/botlxc-planted-%s.sh" % base.name
        assert not os.path.lexists(self.profile_d)
        self.before = fingerprint(self.file)
        self.listing = sorted(os.listdir(self.dir))
        etc = os.stat("/etc")
        self.etc = (etc.st_uid, etc.st_gid, etc.st_mode)

    def assert_untouched(self):
        """Same content, owner, mode, mtime, ctime, inode; nothing new beside it or in /etc."""
        assert fingerprint(self.file) == self.before
        assert sorted(os.listdir(self.dir)) == self.listing
        assert not os.path.lexists(self.profile_d)
        etc = os.stat("/etc")
        assert (etc.st_uid, etc.st_gid, etc.st_mode) == self.etc


@pytest.fixture(scope="class")
def canary(tmp_path_factory):
    return Canary(tmp_path_factory.mktemp("bait"))


def assert_host_files_clean(stack):
    """Nothing planted was taken as a secret; the host's own files are private and real."""
    masters = [stack / ".botlxc" / "secrets" / (c + ".env") for c in SERVICES]
    for path in [stack / ".env", *masters]:
        assert not os.path.islink(path)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        text = path.read_text()
        for value in ("CanaryTablesPassword", "CanaryCachePassword", OVERSIZED_SECRET, "$("):
            assert value not in text, path
    state = os.lstat(stack / ".botlxc")
    assert stat.S_ISDIR(state.st_mode) and stat.S_IMODE(state.st_mode) == 0o700


def lose_masters(stack):
    """The host's own copy of the secrets lost: botlxc then falls back to what lies in the
    mounted conf dir (where botlxc < 0.3 kept them), i.e. reads what was planted there."""
    for comp in SERVICES:
        (stack / ".botlxc" / "secrets" / (comp + ".env")).unlink()


class TestBoundary:
    """One tenant (tables + cache): its containers' root attacks the host through the mounts."""

    def test_another_tenants_stack_is_refused(self, svc_tenant, tmp_path_factory):
        owner, stack = svc_tenant
        intruder, _ = make_tenant(tmp_path_factory, "other")
        marker = stack / ".botlxc" / "tenant"
        before = {p: fingerprint(p) for p in (marker, stack / ".env")}
        try:
            proc = cli("up", "--tenant", intruder, "--stack-dir", stack, *UP_SERVICES)
            assert proc.returncode == 2, proc.stderr
            lines = error_lines(proc)
            assert len(lines) == 1 and owner in lines[0], proc.stderr
            assert instances(intruder) == {}
            assert {p: fingerprint(p) for p in before} == before
        finally:
            cleanup(intruder)
        assert_healthy(owner, SERVICES)

    def test_planted_links_never_reach_the_host(self, svc_tenant, canary):
        tenant, stack = svc_tenant
        tables, cache = tenant + "-tables", tenant + "-cache"
        with pg(stack) as conn:
            conn.execute("create table if not exists kept (id int primary key, body text)")
            conn.execute("insert into kept values (1, 'written before the plants')")

        # Round 1, the tenant up: links where the host used to read and write secrets (and
        # where it might create files), to a host file, to /dev/zero, to /etc.
        inside(tables, """
            cd /opt/gbo/conf
            rm -f secrets.env .secrets.env.tmp .env
            ln -s "$1" secrets.env          # botlxc < 0.3 read (and rewrote) this file
            ln -s "$1" .secrets.env.tmp     # ... through this temporary name
            ln -s "$2" .env
            ln -s /etc /opt/gbo/data/etc-link
            ln -s "$3" /opt/gbo/logs/profile-link
            ln -s "$1" /opt/gbo/logs/canary-link
            """, canary.file, canary.new, canary.profile_d)
        inside(cache, """
            cd /opt/gbo/conf
            rm -f secrets.env
            ln -s /dev/zero secrets.env
            ln -s /etc /opt/gbo/data/etc-link
            """)
        lose_masters(stack)
        ok("up", "--tenant", tenant, "--stack-dir", stack, *UP_SERVICES)
        assert_healthy(tenant, SERVICES)
        canary.assert_untouched()

        # Round 2, before `down`: a FIFO, a 1 GiB file and a shell expansion where secrets
        # were read (the links of round 1 beside them stay).
        inside(tables, """
            cd /opt/gbo/conf
            rm -f secrets.env
            mkfifo secrets.env
            """)
        inside(cache, """
            cd /opt/gbo/conf
            rm -f secrets.env
            printf 'CACHE_PASSWORD=%s\\n' "$1" > secrets.env
            truncate -s 1G secrets.env
            printf 'CACHE_PASSWORD=$(touch %s)\\n' "$2" > .secrets.env.tmp
            """, OVERSIZED_SECRET, canary.new)
        ok("down", "--tenant", tenant)
        assert instances(tenant) == {}
        lose_masters(stack)
        proc = ok("up", "--tenant", tenant, "--stack-dir", stack, *UP_SERVICES)
        assert "Traceback" not in proc.stderr

        canary.assert_untouched()
        assert_host_files_clean(stack)
        assert_healthy(tenant, SERVICES)
        with pg(stack) as conn:
            assert conn.execute("select body from kept where id = 1").fetchone() == (
                "written before the plants",)

    def test_repair_after_lost_package_and_secrets(self, svc_tenant):
        tenant, stack = svc_tenant
        tables, cache = tenant + "-tables", tenant + "-cache"
        old = read_env(stack)
        with pg(stack) as conn:
            conn.execute("create table if not exists kept (id int primary key, body text)")
            conn.execute("insert into kept values (2, 'written before the breakage')")
        assert valkey.Valkey.from_url(old["CACHE_URL"], socket_timeout=10).set(
            "kept", "written before the breakage")

        # Break both: the cache's package gone (and its service with it), the tables'
        # secrets lost on both sides.
        inside(cache, """
            export DEBIAN_FRONTEND=noninteractive
            apt-get purge -qy valkey-server valkey-tools >/dev/null
            systemctl restart cache.service || true
            """)
        (stack / ".botlxc" / "secrets" / "tables.env").unlink()
        inside(tables, "rm /etc/botlxc/secrets.env")
        broken = own_status(tenant)
        assert broken["tables"]["health"].startswith("unhealthy"), broken
        assert broken["cache"]["health"].startswith("unhealthy"), broken

        proc = ok("up", "--tenant", tenant, "--stack-dir", stack, *UP_SERVICES)
        assert "Traceback" not in proc.stderr
        assert_healthy(tenant, SERVICES)
        new = read_env(stack)
        new_pw = urlparse(new["DATABASE_URL"]).password
        assert new_pw and new_pw != urlparse(old["DATABASE_URL"]).password  # regenerated
        with pg(stack) as conn:
            assert conn.execute("select body from kept order by id").fetchall() == [
                ("written before the plants",), ("written before the breakage",)]
            assert conn.execute("select current_user").fetchone()[0] == "gbuser"
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(old["DATABASE_URL"], connect_timeout=10)
        client = valkey.Valkey.from_url(new["CACHE_URL"], socket_timeout=10)
        assert client.get("kept") == b"written before the breakage"
        assert client.set("after-repair", "yes")

    def test_links_on_pushed_files_never_reach_the_host(self, svc_tenant, canary):
        """Files botlxc pushes onto the conf mount, replaced by links: LXD writes them from
        inside the container, so the host's files stay untouched."""
        tenant, stack = svc_tenant
        inside(tenant + "-tables", """
            cd /opt/gbo/conf
            rm -f postgresql.conf pg_hba.conf
            ln -s "$1" postgresql.conf
            ln -s "$2" pg_hba.conf
            """, canary.file, canary.new)
        ok("down", "--tenant", tenant, "--component", "tables")  # the conf dir stays
        BOUNDARY["up"] = proc = cli("up", "--tenant", tenant, "--stack-dir", stack,
                                    *UP_SERVICES)
        canary.assert_untouched()
        assert_host_files_clean(stack)
        assert "Traceback" not in proc.stderr
        assert proc.returncode == 0, proc.stderr  # the planted entries are cleared inside

    def test_tenant_ends_healthy_after_links_on_pushed_files(self, svc_tenant):
        tenant, _ = svc_tenant
        if "up" not in BOUNDARY:
            pytest.skip("the planting test did not get that far")
        assert BOUNDARY["up"].returncode == 0, BOUNDARY["up"].stderr
        assert_healthy(tenant, SERVICES)


# ----------------------------------------------------------------------------- identity


def test_a_copy_with_the_labels_is_foreign(tmp_path_factory):
    tenant, stack = make_tenant(tmp_path_factory, "ident")
    own, copy = tenant + "-cache", tenant + "-cache-copy"
    try:
        ok("up", "--tenant", tenant, "--stack-dir", stack, "--component", "cache",
           "--containers-only")
        lxc("copy", own, copy)
        kept = lxc_instance(copy)
        assert kept["config"]["user.botlxc.tenant"] == tenant
        assert kept["config"]["user.botlxc.component"] == "cache"

        rows = json.loads(ok("status", "--tenant", tenant, "--json").stdout)
        by_name = {r["name"]: r for r in rows}
        assert by_name[copy]["health"].startswith("foreign"), rows
        assert by_name[own]["health"] != by_name[copy]["health"]

        def untouched():
            now = lxc_instance(copy)
            assert (now["config"], now["devices"], now["status"]) == (
                kept["config"], kept["devices"], kept["status"])

        ok("up", "--tenant", tenant, "--stack-dir", stack, "--component", "cache",
           "--containers-only")
        untouched()
        proc = ok("down", "--tenant", tenant)
        assert copy in proc.stderr  # says what it left alone
        assert sorted(instances(tenant)) == [copy]
        assert lxc_instance(own) is None
        untouched()
    finally:
        force_delete(copy)
        cleanup(tenant)
    assert lxc_instance(copy) is None


# ----------------------------------------------------------------------------- concurrency


def test_three_new_tenants_at_once_get_distinct_ports(tmp_path_factory):
    tenants = [make_tenant(tmp_path_factory, "race") for _ in range(3)]
    procs = []
    try:
        for tenant, stack in tenants:
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "botlxc.py"), "up", "--tenant", tenant,
                 "--stack-dir", str(stack), "--containers-only"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
        results, deadline = [], time.monotonic() + HANG
        for proc in procs:
            try:
                err = proc.communicate(timeout=max(1, deadline - time.monotonic()))[1]
            except subprocess.TimeoutExpired:
                children = subprocess.run(["ps", "-eo", "pid,etimes,args"], capture_output=True,
                                          text=True).stdout.splitlines()
                for other in procs:
                    other.kill()
                pytest.fail("a concurrent `up` did not finish within %d s; its lxc commands "
                            "still running:\n%s\n%s" % (HANG, "\n".join(
                                line for line in children if "lxc " in line),
                                "\n".join(p.communicate()[1] for p in procs)))
            results.append((err, proc.returncode))
        assert [rc for _, rc in results] == [0, 0, 0], "\n".join(err for err, _ in results)
        ports = []
        for tenant, _ in tenants:
            found = instances(tenant)
            assert sorted(found) == sorted("%s-%s" % (tenant, c)
                                           for c in ("tables", "drive", "cache"))
            for inst in found.values():
                assert inst["status"] == "Running", inst["name"]
                ports += [int(d["listen"].rsplit(":", 1)[1])
                          for d in inst["devices"].values() if d["type"] == "proxy"]
        assert len(ports) == 9 and len(set(ports)) == 9, sorted(ports)
        listening = subprocess.run(["ss", "-Htln"], capture_output=True, text=True).stdout
        bound = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening.splitlines()}
        assert set(ports) <= bound  # each proxy really holds its port on the host
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for tenant, _ in tenants:
            cleanup(tenant)


# ----------------------------------------------------------------------------- kill matrix
# One tenant, PostgreSQL only, the cases in order. The first starts from nothing (a new
# tenant: its cold `up` runs initdb). Each later one: the tenant up, a row written, `down`
# (the data stays), then a cold `up` re-creating the container. That `up` gets the signal at
# the point it is seen to be at, then `up` runs once more: exit 0, healthy, the rows still
# there. Points: the instance exists; apt's dpkg runs inside; initdb runs (pgdata.init);
# PostgreSQL runs but the installed label is not set yet.
# SIGINT lets botlxc finish the running step, so Ctrl-C during initdb is the same botlxc path
# as during dpkg (the install step runs on): that case is left out to keep CI short.

POINTS = ("instance", "dpkg", "initdb", "unlabelled")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT}
CASES = [("SIGKILL", "initdb"), ("SIGKILL", "instance"), ("SIGKILL", "dpkg"),
         ("SIGKILL", "unlabelled"), ("SIGINT", "instance"), ("SIGINT", "dpkg"),
         ("SIGINT", "unlabelled")]
#: (signal, point) -> what each case saw; summarised by the last test.
KILLS = {}


def process_group(pgid):
    """Pids whose process group is pgid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                found.append(int(entry))
    return found


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


class Watch:
    """Where a cold `up` of the tables container is, from the host and from inside."""

    def __init__(self, tenant, stack):
        self.name = tenant + "-tables"
        self.data = stack / "tables" / "data"

    def instance(self):
        return lxc_instance(self.name)

    def dpkg(self):
        """apt's dpkg (unpacking or configuring) is running inside."""
        proc = subprocess.run(["lxc", "exec", self.name, "--", "pgrep", "-f",
                               "dpkg .*--status-fd"], capture_output=True, text=True)
        return proc.returncode == 0

    def initdb(self):
        return os.path.lexists(self.data / "pgdata.init")

    def postmaster(self):
        return os.path.lexists(self.data / "pgdata" / "postmaster.pid")

    def label(self):
        inst = self.instance()
        return bool(inst and inst["config"].get("user.botlxc.installed"))

    def reached(self, target):
        """The furthest point seen so far (cheap host checks first)."""
        if self.postmaster():
            return "unlabelled"
        if self.initdb():
            return "initdb"
        if target in ("instance", "dpkg"):
            inst = self.instance()
            if inst is None:
                return None
            if target == "dpkg" and inst["status"] == "Running" and self.dpkg():
                return "dpkg"
            return "instance"
        return None


@pytest.fixture(scope="class")
def kill_tenant(tmp_path_factory):
    tenant, stack = make_tenant(tmp_path_factory, "kill")
    try:
        yield tenant, stack, {"rows": []}
    finally:
        cleanup(tenant)


class TestKillMatrix:

    @pytest.mark.parametrize("signame,point", CASES, ids=["-".join(c) for c in CASES])
    def test_killed_cold_up_converges(self, kill_tenant, tmp_path, signame, point):
        tenant, stack, state = kill_tenant
        up = ["up", "--tenant", tenant, "--stack-dir", stack, "--component", "tables"]
        watch = Watch(tenant, stack)
        if watch.instance() is not None:  # the previous case left it converged
            ok(*up)
            row = "%s-%s" % (signame, point)
            with pg(stack) as conn:
                conn.execute("create table if not exists kill_rows (id text primary key)")
                conn.execute("insert into kill_rows values (%s)", (row,))
            state["rows"].append(row)
            ok("down", "--tenant", tenant)
            assert watch.instance() is None
            assert not watch.postmaster(), "down stopped PostgreSQL uncleanly (postmaster.pid)"
        if point == "initdb" and (watch.data / "pgdata").exists():
            shutil.rmtree(watch.data / "pgdata")
            state["rows"] = []  # a new cluster: nothing before it to keep

        out = tmp_path / "up.out"
        log = out.open("w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "botlxc.py"), *map(str, up)],
                                stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                start_new_session=True)  # its own group, as on a terminal
        seen = None
        try:
            deadline = time.monotonic() + HANG
            while proc.poll() is None and time.monotonic() < deadline:
                seen = watch.reached(point)
                if seen is not None and POINTS.index(seen) >= POINTS.index(point):
                    break
                time.sleep(0.01 if point in ("initdb", "unlabelled") else 0.05)
            alive = proc.poll() is None
            record = {"target": point, "seen": seen if alive else "finished",
                      "dpkg_at_kill": None, "label_at_kill": None}
            if alive:
                # A terminal's Ctrl-C goes to the whole foreground group: botlxc's own
                # commands must be outside it (own sessions), so the signal sent to botlxc
                # alone below is exactly what a Ctrl-C (or a kill -9) would do.
                extra = [p for p in process_group(proc.pid) if p != proc.pid]
                if extra:
                    time.sleep(0.2)  # a child between fork and setsid is in it briefly
                    extra = [p for p in extra if p in process_group(proc.pid)]
                assert not extra, ["%d %s" % (p, cmdline(p)) for p in extra]
                proc.send_signal(SIGNALS[signame])
                record["instance_at_kill"] = (watch.instance() or {}).get("status")
                record["initdb_at_kill"] = watch.initdb()
                record["postmaster_at_kill"] = watch.postmaster()
                if point == "dpkg":
                    record["dpkg_at_kill"] = watch.dpkg()
            try:
                proc.wait(timeout=HANG)
            except subprocess.TimeoutExpired:
                pytest.fail("botlxc did not exit within %d s of %s" % (HANG, signame))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        output = out.read_text()
        record["rc"] = proc.returncode
        record["label_at_kill"] = watch.label()  # botlxc is gone: it can set nothing more
        record["hit"] = alive and seen == point and (
            point != "unlabelled" or not record["label_at_kill"])
        KILLS[(signame, point)] = record
        print("kill %s at %s: %s" % (signame, point, record))
        if alive and signame == "SIGKILL":
            assert proc.returncode == -signal.SIGKILL
        elif alive:
            assert proc.returncode in (130, 0), output  # 0: it was past its last step
            if proc.returncode == 130:
                assert "interrupted" in output, output
        assert "Traceback" not in output, output

        again = ok(*up)
        assert "Traceback" not in again.stderr
        assert_healthy(tenant, ["tables"])
        assert not watch.initdb(), "a half-initialised cluster stayed behind"
        assert (watch.data / "pgdata" / "PG_VERSION").is_file()
        with pg(stack) as conn:
            conn.execute("create table if not exists kill_rows (id text primary key)")
            rows = {r[0] for r in conn.execute("select id from kill_rows")}
        assert set(state["rows"]) <= rows, (state["rows"], rows)

    def test_most_kill_points_were_hit(self, capsys):
        if len(KILLS) < len(CASES):
            pytest.skip("the kill matrix did not run in full")
        lines = ["%-8s %-11s %-6s (seen %s, exit %s, instance %s)" % (
            sig, point, "hit" if rec["hit"] else "MISSED", rec["seen"], rec["rc"],
            rec.get("instance_at_kill")) for (sig, point), rec in KILLS.items()]
        with capsys.disabled():
            print("\nkill points:\n  " + "\n  ".join(lines))
        for sig in SIGNALS:
            cases = [rec for (s, _), rec in KILLS.items() if s == sig]
            assert sum(rec["hit"] for rec in cases) >= len(cases) - 1, "\n".join(lines)
