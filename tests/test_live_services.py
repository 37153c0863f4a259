"""Live: the tenant's services, checked from the host with real clients (issue: services).

One tenant goes up with PostgreSQL, rclone S3 and Valkey; the tests write a row, a key and an
object, take the containers down, bring them up again and read everything back with the same
credentials. Runs on the real LXD only (see test_live.py for the skip/fail rule).
"""
import json
import stat
import subprocess
from urllib.parse import urlparse

import pytest

from test_live import botlxc, changes, cleanup, instances, lxc, make_tenant, real_lxd  # noqa

pytestmark = pytest.mark.live
boto3 = pytest.importorskip("boto3")
psycopg = pytest.importorskip("psycopg")
valkey = pytest.importorskip("valkey")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402


def read_env(stack):
    values = {}
    for line in (stack / ".env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key] = value
    return values


def s3(env, secret=None):
    return boto3.client(
        "s3", endpoint_url=env["DRIVE_SERVER"], region_name="us-east-1",
        aws_access_key_id=env["DRIVE_ACCESSKEY"],
        aws_secret_access_key=secret or env["DRIVE_SECRET"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def tenant(tmp_path_factory):
    name, stack = make_tenant(tmp_path_factory, "svc")
    try:
        first = botlxc("up", "--tenant", name, "--stack-dir", str(stack))
        yield name, stack, first
    finally:
        cleanup(name)


def test_env_file_is_private_and_complete(tenant):
    _, stack, _ = tenant
    mode = stat.S_IMODE((stack / ".env").stat().st_mode)
    assert mode == 0o600
    env = read_env(stack)
    for key in ("DATABASE_URL", "DRIVE_SERVER", "DRIVE_ACCESSKEY", "DRIVE_SECRET", "CACHE_URL"):
        assert env.get(key), key
    assert urlparse(env["DATABASE_URL"]).hostname == "127.0.0.1"


def test_status_reports_healthy(tenant):
    name, _, _ = tenant
    rows = json.loads(botlxc("status", "--tenant", name, "--json").stdout)
    assert [(r["component"], r["health"]) for r in rows] == [
        ("tables", "healthy"), ("drive", "healthy"), ("cache", "healthy")]


def test_postgres_from_host(tenant):
    _, stack, _ = tenant
    with psycopg.connect(read_env(stack)["DATABASE_URL"], connect_timeout=10) as conn:
        conn.execute("create table if not exists notes (id int primary key, body text)")
        conn.execute("insert into notes values (1, 'kept across down/up') "
                     "on conflict (id) do nothing")
        assert conn.execute("select current_user").fetchone()[0] == "gbuser"
    url = urlparse(read_env(stack)["DATABASE_URL"])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=url.port, user="gbuser", password="wrong",
                        dbname="botserver", connect_timeout=10)


def test_valkey_from_host(tenant):
    _, stack, _ = tenant
    client = valkey.Valkey.from_url(read_env(stack)["CACHE_URL"], socket_timeout=10)
    assert client.set("greeting", "kept across down/up")
    port = urlparse(read_env(stack)["CACHE_URL"]).port
    anonymous = valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=10)
    assert anonymous.ping()
    with pytest.raises(valkey.exceptions.NoPermissionError, match="no permissions"):
        anonymous.set("x", "y")


def test_valkey_application_user_has_no_admin_or_dangerous_commands(tenant):
    _, stack, _ = tenant
    client = valkey.Valkey.from_url(read_env(stack)["CACHE_URL"], socket_timeout=10)
    assert client.set("session:1", "x") and client.get("session:1") == b"x"
    assert client.expire("session:1", 60)
    for command in (("CONFIG", "GET", "dir"), ("FLUSHALL",), ("KEYS", "*")):
        with pytest.raises(valkey.exceptions.NoPermissionError):
            client.execute_command(*command)
    assert client.get("session:1") == b"x"  # FLUSHALL was refused


def test_services_run_hardened(tenant):
    name, _, _ = tenant
    for component in ("tables", "drive", "cache"):
        shown = lxc("exec", "%s-%s" % (name, component), "--", "systemctl", "show",
                    component + ".service", "-p", "ActiveState", "-p", "NoNewPrivileges",
                    "-p", "ProtectSystem", "-p", "ProtectHome", "-p", "PrivateTmp",
                    "-p", "CapabilityBoundingSet").stdout
        values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        assert values == {"ActiveState": "active", "NoNewPrivileges": "yes",
                          "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                          "CapabilityBoundingSet": ""}, (component, values)


def test_s3_from_host(tenant):
    _, stack, _ = tenant
    env = read_env(stack)
    client = s3(env)
    client.create_bucket(Bucket="botlxc-live")
    client.put_object(Bucket="botlxc-live", Key="hello.txt", Body=b"kept across down/up")
    body = client.get_object(Bucket="botlxc-live", Key="hello.txt")["Body"].read()
    assert body == b"kept across down/up"
    assert (stack / "drive" / "data" / "botlxc-live" / "hello.txt").read_bytes() == body
    with pytest.raises(ClientError):
        s3(env, secret="wrong-secret").list_buckets()


def test_chapter_manual_commands(tenant):
    name, stack, _ = tenant
    out = lxc("exec", name + "-tables", "--", "psql", "-U", "gbuser", "botserver", "-tAc",
              "select 1").stdout
    assert out.strip() == "1"
    assert lxc("exec", name + "-cache", "--", "valkey-cli", "ping").stdout.strip() == "PONG"
    journal = lxc("exec", name + "-tables", "--", "journalctl", "-u", "tables",
                  "--no-pager").stdout
    assert "tables.service" in journal or "PostgreSQL" in journal
    assert any((stack / "tables" / "logs").iterdir()), "no PostgreSQL log files on the host"


def test_secrets_stay_out_of_lxd_and_runbooks(tenant):
    name, stack, _ = tenant
    env = read_env(stack)
    secret_values = [env["DRIVE_SECRET"], env["DRIVE_ACCESSKEY"],
                     urlparse(env["DATABASE_URL"]).password,
                     urlparse(env["CACHE_URL"]).password]
    shown = "".join(lxc("config", "show", n, "--expanded").stdout for n in instances(name))
    plan = botlxc("up", "--tenant", name, "--stack-dir", str(stack), "--dry-run").stdout
    for value in secret_values:
        assert value not in shown
        assert value not in plan


def test_second_up_changes_nothing(tenant):
    name, stack, _ = tenant
    proc = botlxc("up", "--tenant", name, "--stack-dir", str(stack))
    assert changes(proc) == 0, proc.stderr


def test_zz_down_then_up_keeps_data_and_credentials(tenant):
    name, stack, _ = tenant
    env_before = (stack / ".env").read_text()
    botlxc("down", "--tenant", name)
    assert instances(name) == {}
    botlxc("up", "--tenant", name, "--stack-dir", str(stack))
    assert (stack / ".env").read_text() == env_before
    env = read_env(stack)
    with psycopg.connect(env["DATABASE_URL"], connect_timeout=10) as conn:
        assert conn.execute("select body from notes where id = 1").fetchone()[0] == \
            "kept across down/up"
    client = valkey.Valkey.from_url(env["CACHE_URL"], socket_timeout=10)
    assert client.get("greeting") == b"kept across down/up"
    body = s3(env).get_object(Bucket="botlxc-live", Key="hello.txt")["Body"].read()
    assert body == b"kept across down/up"


def test_runbook_replayed_by_hand_does_what_up_does(tmp_path_factory):
    """The dry-run runbook, run with bash, leaves a tenant that `up` finds converged."""
    name, stack = make_tenant(tmp_path_factory, "book")
    try:
        plan = botlxc("up", "--tenant", name, "--stack-dir", str(stack), "--dry-run").stdout
        assert not instances(name) and not stack.exists()
        script = stack.parent / "runbook.sh"
        script.write_text(plan)
        replay = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        assert replay.returncode == 0, replay.stderr[-2000:]
        proc = botlxc("up", "--tenant", name, "--stack-dir", str(stack))
        assert changes(proc) == 0, proc.stderr
        rows = json.loads(botlxc("status", "--tenant", name, "--json").stdout)
        assert [r["health"] for r in rows] == ["healthy"] * 3
        assert stat.S_IMODE((stack / ".env").stat().st_mode) == 0o600
    finally:
        cleanup(name)
