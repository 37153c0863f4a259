"""Live: local mode and migration of tables between its container and this host (the
issue: "Migrate tables to local and back with a row-count check (local mode runs on the CI
host itself: clean up after the test)").

Local mode runs PostgreSQL on this machine, as root's services do (start-stop-daemon when
there is no systemd), so every tenant here is taken apart in a finalizer even when a test
fails: the host's service first (`uninstall tables --local --purge-data`), then the tenant
(`destroy --purge-data --yes`), then the dir under /srv that held its stack.

Stacks live under a root-owned dir in /srv, not under pytest's tmp dir: the host's postgres
user must reach its data dir, and /tmp/pytest-of-root is root's alone (0700). A tenant
without containers is found by its default stack (./botserver-stack-T, relative to the
working dir), so those commands run with the stack's parent as cwd.
"""
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from test_live import ROOT, botlxc, cleanup, instances, real_lxd  # noqa: F401
from test_live_services import read_env

pytestmark = pytest.mark.live
psycopg = pytest.importorskip("psycopg")

#: Several tables, a few thousand rows in all.
TABLES = {"customers": 1500, "orders": 2500, "events": 700}
#: What is written while tables runs on the host (then must come back into the container).
LOCAL_ROWS = {"customers": 120, "audit": 33}
PGBIN = "/usr/lib/postgresql/15/bin"


# ----------------------------------------------------------------------------- helpers


def run(*args, cwd=None):
    """botlxc with stdin that is not a terminal (as in cron or CI), never checked."""
    return subprocess.run([sys.executable, str(ROOT / "botlxc.py"), *args],
                          capture_output=True, text=True, cwd=cwd or ROOT,
                          stdin=subprocess.DEVNULL)


def said(proc):
    return proc.stdout + proc.stderr


def pg_port(stack):
    return urlparse(read_env(stack)["DATABASE_URL"]).port


def pg(stack, port=None):
    url = urlparse(read_env(stack)["DATABASE_URL"])
    return psycopg.connect(host="127.0.0.1", port=port or url.port, user=url.username,
                           password=url.password, dbname=url.path.lstrip("/"),
                           connect_timeout=10, autocommit=True)


def write_rows(stack, counts, start=0):
    """`counts` more rows in each table (made if missing), ids from start + 1."""
    with pg(stack) as conn:
        for table, n in counts.items():
            conn.execute("create table if not exists %s (id int primary key, name text, "
                         "amount numeric(10,2), at timestamptz default now())" % table)
            conn.execute("insert into %s (id, name, amount) select i, 'row ' || i, i * 1.5 "
                         "from generate_series(%%s::int, %%s::int) as i" % table,
                         (start + 1, start + n))


def row_counts(stack, port=None):
    """{table: rows} of every table in schema public, through psycopg."""
    with pg(stack, port) as conn:
        tables = [r[0] for r in conn.execute(
            "select tablename from pg_tables where schemaname = 'public' order by 1")]
        return {t: conn.execute("select count(*) from %s" % t).fetchone()[0] for t in tables}


def listeners(port):
    """What listens on TCP port `port` here: `ss -Htlnp` lines (empty: the port is closed)."""
    return subprocess.run(["ss", "-Htlnp", "sport = :%d" % port], capture_output=True,
                          text=True, check=True).stdout.strip()


def listening(port):
    return bool(listeners(port))


def postgres_listens(port):
    """A host postgres on `port` (a port freed here may be taken at once by another
    tenant's LXD proxy: live tests of other tenants run at the same time)."""
    return '"postgres"' in listeners(port)


def status(tenant, cwd=None):
    proc = run("status", "--tenant", tenant, "--json", cwd=cwd)
    assert proc.returncode == 0, said(proc)
    return {r["component"]: r for r in json.loads(proc.stdout)}


def doctor(tenant, cwd=None):
    proc = run("doctor", "-t", tenant, "--json", cwd=cwd)
    return proc.returncode, {c["name"]: c for c in json.loads(proc.stdout or "[]")}, proc


def state_of(tenant, name):
    return instances(tenant)[name]["status"]


def local_dir(stack):
    return stack / "tables" / "local"


def local_conf_port(stack):
    """The port the host's postgres of this stack is configured for (its postgresql.conf)."""
    conf = local_dir(stack) / "conf" / "postgresql.conf"
    for line in conf.read_text().splitlines():
        if line.startswith("port = "):
            return int(line.split("=", 1)[1])
    raise AssertionError("no port in %s" % conf)


def stop_leftover(tenant):
    """Last resort after a failed uninstall: the pid file local mode keeps (no systemd)."""
    pidfile = Path("/run/botlxc/local-%s-tables.pid" % tenant)
    if pidfile.exists():
        subprocess.run(["start-stop-daemon", "--stop", "--quiet", "--oknodo", "--pidfile",
                        str(pidfile), "--retry", "TERM/30/KILL/5", "--remove-pidfile"],
                       check=False)


def logrotate_file(tenant):
    return Path("/etc/logrotate.d/botlxc-%s-tables" % tenant)


def take_apart(tenant, base):
    """The host's service, the tenant, its dir: each step tried even if one before failed."""
    try:
        run("uninstall", "tables", "--local", "--purge-data", "-t", tenant, cwd=base)
        stop_leftover(tenant)
        run("destroy", "--tenant", tenant, "--purge-data", "--yes", cwd=base)
        cleanup(tenant)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        # left by a failed local install (see test_05); names only this test's tenant
        logrotate_file(tenant).unlink(missing_ok=True)


def new_base(prefix="mig"):
    """A tenant name (<= 8 chars) and a root-owned dir of its own under /srv."""
    tenant = "%s%s" % (prefix, secrets.token_hex(2))
    base = Path("/srv/botlxc-test-" + tenant)
    base.mkdir(mode=0o755)
    return tenant, base


# ----------------------------------------------------------------------------- tenants


@pytest.fixture(scope="module")
def tenant():
    """A tenant with tables only, in its container, a few thousand rows in three tables."""
    name, base = new_base()
    stack = base / "stack"
    try:
        botlxc("up", "-t", name, "--stack-dir", str(stack), "-c", "tables")
        write_rows(stack, TABLES)
        yield name, stack
    finally:
        take_apart(name, base)


@pytest.fixture
def bare():
    """A tenant with no containers: its stack the default one, beside the working dir."""
    name, base = new_base()
    try:
        yield name, base, base / ("botserver-stack-" + name)
    finally:
        take_apart(name, base)


# ----------------------------------------------------------------------------- 1. round trip


def test_01_migrate_to_local_and_back_keeps_every_row(tenant):
    name, stack = tenant
    container = name + "-tables"
    in_container = pg_port(stack)
    before = row_counts(stack)
    assert before == TABLES

    proc = run("migrate", "to-local", "tables", "-t", name)
    assert proc.returncode == 0, said(proc)
    on_host = pg_port(stack)
    assert on_host != in_container
    assert "now serves from the host" in proc.stderr, said(proc)
    assert row_counts(stack) == before
    assert state_of(name, container) == "Stopped"
    assert not listening(in_container)  # the container's proxy went with it
    assert postgres_listens(on_host), listeners(on_host)
    row = status(name)["tables"]
    assert row["state"] == "HOST" and row["health"] == "healthy", row
    assert row["ports"] == {"pg": "127.0.0.1:%d" % on_host}, row
    _, checks, proc = doctor(name)
    assert checks["host-tables"]["status"] == "ok", (checks.get("host-tables"), said(proc))
    assert (local_dir(stack) / "data" / "pgdata" / "PG_VERSION").exists()

    # rows written while it serves from the host
    write_rows(stack, LOCAL_ROWS, start=10000)
    on_host_counts = row_counts(stack)
    assert on_host_counts == {t: TABLES.get(t, 0) + LOCAL_ROWS.get(t, 0)
                              for t in set(TABLES) | set(LOCAL_ROWS)}

    # up leaves a component that runs on the host alone (and says so)
    env_text = (stack / ".env").read_text()
    proc = run("up", "-t", name, "-c", "tables")
    assert proc.returncode == 0, said(proc)
    assert "left alone" in proc.stderr and "tables" in proc.stderr, said(proc)
    assert state_of(name, container) == "Stopped"
    assert (stack / ".env").read_text() == env_text
    assert status(name)["tables"]["state"] == "HOST"

    proc = run("migrate", "to-container", "tables", "-t", name)
    assert proc.returncode == 0, said(proc)
    assert "now serves from its container" in proc.stderr, said(proc)
    back = pg_port(stack)
    assert back != on_host
    assert state_of(name, container) == "Running"
    assert row_counts(stack) == on_host_counts
    with pg(stack) as conn:  # the rows themselves, not only how many
        assert conn.execute("select name from audit where id = 10033").fetchone() == \
            ("row 10033",)
    assert not postgres_listens(on_host), listeners(on_host)
    row = status(name)["tables"]
    assert row["state"] == "RUNNING" and row["health"] == "healthy", row
    _, checks, _ = doctor(name)
    assert "host-tables" not in checks
    # the host's data stays (uninstall --local --purge-data removes it); no record of it
    assert (local_dir(stack) / "data" / "pgdata" / "PG_VERSION").exists()
    assert not (stack / ".botlxc" / "local" / "tables.json").exists()


# ----------------------------------------------------------------------------- 2. install


def test_02_install_local_for_a_new_tenant_then_uninstall(bare):
    name, base, stack = bare
    proc = run("install", "tables", "--local", "-t", name, "--stack-dir", str(stack),
               cwd=base)
    assert proc.returncode == 0, said(proc)
    assert instances(name) == {}
    port = pg_port(stack)
    assert postgres_listens(port), listeners(port)
    with pg(stack) as conn:
        conn.execute("create table hello (id int primary key, said text)")
        conn.execute("insert into hello values (1, 'from the host')")
        assert conn.execute("select said from hello").fetchall() == [("from the host",)]
    data = local_dir(stack) / "data"
    assert (data / "pgdata" / "PG_VERSION").exists()
    row = status(name, cwd=base)["tables"]
    assert row["state"] == "HOST" and row["health"] == "healthy", row
    assert row["ports"] == {"pg": "127.0.0.1:%d" % port}, row

    # again: nothing to do, same port, still serving
    proc = run("install", "tables", "--local", "-t", name, cwd=base)
    assert proc.returncode == 0, said(proc)
    assert pg_port(stack) == port
    assert row_counts(stack) == {"hello": 1}

    proc = run("uninstall", "tables", "--local", "-t", name, cwd=base)
    assert proc.returncode == 0, said(proc)
    assert not postgres_listens(port), listeners(port)
    assert (data / "pgdata" / "PG_VERSION").exists()
    assert "tables" not in status(name, cwd=base)

    proc = run("uninstall", "tables", "--local", "--purge-data", "-t", name, cwd=base)
    assert proc.returncode == 2, said(proc)  # it no longer runs on the host
    # installed again, it serves the data it kept
    proc = run("install", "tables", "--local", "-t", name, cwd=base)
    assert proc.returncode == 0, said(proc)
    assert row_counts(stack) == {"hello": 1}
    port = pg_port(stack)
    proc = run("uninstall", "tables", "--local", "--purge-data", "-t", name, cwd=base)
    assert proc.returncode == 0, said(proc)
    assert not postgres_listens(port), listeners(port)
    assert not local_dir(stack).exists()


def test_03_install_local_refused_while_its_container_runs(tenant):
    name, stack = tenant
    container = name + "-tables"
    assert state_of(name, container) == "Running"
    env_text = (stack / ".env").read_text()
    entries = sorted(str(p) for p in stack.rglob("*") if "pgdata" not in p.parts)
    counts = row_counts(stack)

    proc = run("install", "tables", "--local", "-t", name)
    assert proc.returncode == 2, said(proc)
    assert "migrate to-local" in proc.stderr, proc.stderr
    assert (stack / ".env").read_text() == env_text
    assert sorted(str(p) for p in stack.rglob("*") if "pgdata" not in p.parts) == entries
    assert state_of(name, container) == "Running"
    assert not (stack / ".botlxc" / "local" / "tables.json").exists()
    assert row_counts(stack) == counts


# ----------------------------------------------------------------------------- 3. failure


def single_user(pgdata, database, sql):
    """SQL run in PostgreSQL's single-user mode on a stopped cluster, as postgres."""
    done = subprocess.run(["runuser", "-u", "postgres", "--", PGBIN + "/postgres", "--single",
                           "-D", str(pgdata), database], input=sql, capture_output=True,
                          text=True, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout + done.stderr, done.stdout + done.stderr


def stale_cluster(stack):
    """A cluster of its own (initdb) in the host's data dir, which local mode reuses."""
    data = local_dir(stack) / "data"
    pgdata = data / "pgdata"
    shutil.rmtree(pgdata, ignore_errors=True)
    data.mkdir(mode=0o755, parents=True, exist_ok=True)  # (root's umask is 022 here)
    init = subprocess.run(["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700",
                           str(pgdata)], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    done = subprocess.run(["runuser", "-u", "postgres", "--", PGBIN + "/initdb", "-D",
                           str(pgdata), "-U", "postgres", "--auth-local=peer",
                           "--auth-host=scram-sha-256", "--encoding=UTF8",
                           "--locale=C.UTF-8"], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    return pgdata


def stale_cluster_with_an_extra_table(stack):
    """A cluster left in the host's data dir whose template1 holds a table with 5 rows:
    botserver, made again from template1 by the restore, then has a table the container's
    backup has not, so the counts after the restore differ (nothing in botlxc is changed)."""
    single_user(stale_cluster(stack), "template1",
                "CREATE TABLE public.stale_extra (id int)\n"
                "INSERT INTO public.stale_extra SELECT generate_series(1, 5)\n")


def still_served_by_the_container(name, stack, env_text, counts):
    assert (stack / ".env").read_text() == env_text
    assert state_of(name, name + "-tables") == "Running"
    assert row_counts(stack) == counts
    row = status(name)["tables"]
    assert row["state"] == "RUNNING" and row["health"] == "healthy", row
    assert not (stack / ".botlxc" / "local" / "tables.json").exists()
    if (local_dir(stack) / "conf" / "postgresql.conf").exists():
        assert not postgres_listens(local_conf_port(stack))


def test_04_failed_migration_leaves_the_container_serving(tenant):
    name, stack = tenant
    env_text = (stack / ".env").read_text()
    counts = row_counts(stack)
    assert counts

    # the host's install fails: its data dir holds files that are no cluster
    pgdata = local_dir(stack) / "data" / "pgdata"
    shutil.rmtree(pgdata, ignore_errors=True)
    pgdata.mkdir(parents=True)
    (pgdata / "somebody-elses-file").write_text("not a cluster\n")
    proc = run("migrate", "to-local", "tables", "-t", name)
    assert proc.returncode == 3, said(proc)  # the host's install.sh failed (exit codes: 3)
    assert "refusing to initialise" in proc.stderr, proc.stderr
    still_served_by_the_container(name, stack, env_text, counts)
    assert (pgdata / "somebody-elses-file").exists()

    # the restore succeeds but the counts differ: the old side keeps serving, exit 1
    stale_cluster_with_an_extra_table(stack)
    proc = run("migrate", "to-local", "tables", "-t", name)
    assert proc.returncode == 1, said(proc)
    assert "rows:public.stale_extra absent != 5" in proc.stderr, proc.stderr
    assert "the container keeps serving" in proc.stderr, proc.stderr
    still_served_by_the_container(name, stack, env_text, counts)
    assert "host-tables" not in doctor(name)[1]


def test_05_a_failed_local_install_leaves_nothing_running(bare):
    name, base, stack = bare
    # a cluster without template1: install.sh starts it, then its CREATE DATABASE fails
    single_user(stale_cluster(stack), "postgres",
                "UPDATE pg_database SET datistemplate = false WHERE datname = 'template1'\n"
                "DROP DATABASE template1\n")
    proc = run("install", "tables", "--local", "-t", name, cwd=base)
    assert proc.returncode == 3, said(proc)
    assert 'template database "template1" does not exist' in proc.stderr, proc.stderr
    port = local_conf_port(stack)
    assert not postgres_listens(port), listeners(port)
    assert not Path("/run/botlxc/local-%s-tables.pid" % name).exists()
    assert not logrotate_file(name).exists()
