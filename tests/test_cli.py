"""The command line through botlxc.main: exit codes, one-line errors, stdout vs stderr.

`up` reads the real host's facts, so here it only gets input that validation refuses
before any command runs; status and down run against canned `lxc list` output.
"""
import hashlib
import json

import pytest

import botlxc
from conftest import LIST, health_reads, make_spec, other_tenant, up_world


def run(capsys, *argv):
    code = botlxc.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err, message):
    assert err == "botlxc: error: %s\n" % message


# ----------------------------------------------------------------------------- usage


@pytest.mark.parametrize("tenant", ["Acme", "1acme", "acme-", "a;rm", "a--b", "acme corp",
                                    "acme_corp", "café", "-acme", "a$(id)"])
@pytest.mark.parametrize("command", [["up"], ["up", "--dry-run"], ["down"], ["status"]])
def test_bad_tenant_names_exit_2_before_any_command(capsys, fp, command, tenant):
    code, out, err = run(capsys, *command, "--tenant", tenant)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, (
        "invalid tenant name %r: use lowercase letters, digits and single dashes, starting "
        "with a letter and not ending with a dash (it becomes part of LXD instance names)"
        % tenant))
    assert list(fp.calls) == []


def test_tenant_name_too_long_for_every_instance_name(capsys, fp):
    longest_ok = "t" * (63 - len("-tables"))
    assert botlxc.validate_tenant(longest_ok) == longest_ok
    assert len(longest_ok + "-tables") == botlxc.MAX_NAME
    code, out, err = run(capsys, "up", "--tenant", longest_ok + "x")
    assert code == 2 and out == ""
    assert_one_line_error(err, "tenant name %r is too long: at most 56 characters, so that "
                               "'%s-tables' fits LXD's 63-character limit"
                          % (longest_ok + "x", longest_ok + "x"))
    assert list(fp.calls) == []


def test_empty_tenant_name(capsys, fp):
    code, out, err = run(capsys, "up", "--tenant", "")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "tenant name is empty")
    assert list(fp.calls) == []


@pytest.mark.parametrize("args, message", [
    (["-c", "tables", "-c", "nosuch"], "unknown component 'nosuch' (known: tables, drive, "
                                       "cache, llm, email)"),
    (["--port", "tables=70000"], "invalid --port 'tables=70000': port 70000 is out of range "
                                 "1-65535"),
    (["--port", "tables=0"], "invalid --port 'tables=0': port 0 is out of range 1-65535"),
    (["--port", "tables=abc"], "invalid --port 'tables=abc': expected COMPONENT[.NAME]="
                               "HOSTPORT, e.g. tables=15432 or drive.s3=19000"),
    (["--port", "tables=123456"], "invalid --port 'tables=123456': expected COMPONENT[.NAME]"
                                  "=HOSTPORT, e.g. tables=15432 or drive.s3=19000"),
    (["--port", "nosuch=1234"], "invalid --port 'nosuch=1234': unknown component 'nosuch'"),
    (["--port", "drive.ftp=2121"], "invalid --port 'drive.ftp=2121': drive has ports s3, "
                                   "console"),
    (["--port", "tables=15432", "--port", "cache=15432"],
     "--port: the same host port is picked twice"),
    (["--listen", "localhost"], "invalid --listen 'localhost': give an IP address such as "
                                "127.0.0.1"),
    (["--listen", "127.0.0.1:80"], "invalid --listen '127.0.0.1:80': give an IP address such "
                                   "as 127.0.0.1"),
    (["--stack-dir", "/srv/a;rm -rf /"], "invalid --stack-dir '/srv/a;rm -rf /': shell "
                                         "metacharacters are not allowed in paths"),
    (["--stack-dir", "/srv/$(id)"], "invalid --stack-dir '/srv/$(id)': shell metacharacters "
                                    "are not allowed in paths"),
    (["--engine", "minio"], "drive engine minio needs --artifact minio=PATH (or =URL with "
                            "--sha256 minio=HEX): botlxc does not fetch the MinIO server "
                            "binary itself"),
    (["--engine", "drive=minio"], "drive engine minio needs --artifact minio=PATH (or =URL "
                                  "with --sha256 minio=HEX): botlxc does not fetch the MinIO "
                                  "server binary itself"),
    (["--engine", "minio", "--artifact", "minio=https://example.org/minio"],
     "--artifact minio=https://example.org/minio is a URL: give its --sha256 minio=HEX too"),
    (["--engine", "minio", "--artifact", "drive=https://example.org/minio"],
     "--artifact minio=https://example.org/minio is a URL: give its --sha256 minio=HEX too"),
    (["--engine", "minio", "--artifact", "minio=/nonexistent/minio"],
     "artifact /nonexistent/minio does not exist"),
    (["--engine", "minio", "--artifact", "minio=/x", "--sha256", "minio=abc"],
     "invalid --sha256 minio=abc: expected 64 hex digits"),
    (["--engine", "minio", "--artifact", "rclone=/x"],
     "invalid --artifact 'rclone=/x': expected COMPONENT=VALUE or ENGINE=VALUE for an engine "
     "that takes a binary (minio=VALUE, llama-server=VALUE, stalwart=VALUE)"),
    (["--artifact", "minio=/srv/minio"],
     "--artifact minio=/srv/minio: the drive engine rclone takes no binary (--engine minio "
     "does)"),
    (["--sha256", "tables=" + "0" * 64],
     "--sha256 tables=%s: the tables engine postgresql takes no binary (no engine of it "
     "does)" % ("0" * 64)),
    (["--engine", "ceph"], "invalid --engine 'ceph': no component has an engine of that name; "
                           "give COMPONENT=ENGINE"),
    (["--engine", "drive=ceph"], "invalid --engine 'drive=ceph': drive has engines rclone, "
                                 "minio"),
    (["--engine", "nosuch=minio"], "invalid --engine 'nosuch=minio': unknown component "
                                   "'nosuch'"),
    (["--engine", "minio", "--engine", "drive=rclone"], "--engine: two engines for drive"),
    (["--image", "debian;reboot"], "invalid --image 'debian;reboot': expected [REMOTE:]ALIAS "
                                   "or a fingerprint, e.g. images:debian/12"),
    (["--image", "$(id)"], "invalid --image '$(id)': expected [REMOTE:]ALIAS or a "
                           "fingerprint, e.g. images:debian/12"),
])
def test_bad_up_input_exits_2_with_one_line_and_no_command(capsys, fp, args, message):
    code, out, err = run(capsys, "up", "--tenant", "acme", *args)
    assert (code, out) == (2, "")
    assert_one_line_error(err, message)
    assert list(fp.calls) == []


def test_click_usage_errors_exit_2(capsys, fp):
    for args in (["up", "--jobs", "0"], ["frobnicate"],
                 ["up", "--no-such-option"]):
        code, out, err = run(capsys, *args)
        assert code == 2, args
        assert out == ""
        assert err.splitlines()[-1].startswith("Error: ")
    assert list(fp.calls) == []


def test_artifact_checksum_mismatch_is_exit_1(capsys, fp, tmp_path):
    binary = tmp_path / "minio"
    binary.write_bytes(b"\x7fELF not really minio")
    actual = hashlib.sha256(binary.read_bytes()).hexdigest()
    code, out, err = run(capsys, "up", "--engine", "minio", "--artifact", "minio=%s" % binary,
                         "--sha256", "minio=" + "0" * 64)
    assert (code, out) == (1, "")
    assert_one_line_error(err, "artifact %s: sha256 mismatch: expected %s, got %s; refusing "
                               "to install it" % (binary, "0" * 64, actual))
    assert list(fp.calls) == []


def test_help_and_version_exit_0(capsys, fp):
    for args in (["--help"], ["up", "--help"], ["down", "-h"], ["host", "setup", "--help"]):
        code, out, err = run(capsys, *args)
        assert code == 0, args
        assert out.startswith("Usage: botlxc") and err == ""
    code, out, err = run(capsys, "--version")
    assert (code, out, err) == (0, "botlxc, version %s\n" % botlxc.VERSION, "")
    assert list(fp.calls) == []


# ----------------------------------------------------------------------------- status


def rows_of_acme_up(stack):
    return [{"name": "acme-" + c, "component": c, "state": "RUNNING", "ipv4": [ip],
             "ports": {"port-%d" % port: "%d->%d" % (port, port)}, "stack": str(stack),
             "installed": True, "health": "healthy", "limits": {}, "network": "lxdbr0"}
            for c, ip, port in (("tables", "10.101.177.23", 5432),
                                ("drive", "10.101.177.24", 9000),
                                ("cache", "10.101.177.25", 6379))]


def test_status_json_prints_json_on_stdout_only(capsys, calls, tmp_path):
    spec = make_spec(tmp_path)
    calls(LIST, data=other_tenant({"tables": 5433}) + up_world(spec))
    health_reads(calls, spec)
    code, out, err = run(capsys, "status", "--tenant", "acme", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == rows_of_acme_up(tmp_path / "stack")
    assert calls.made() == calls.expected


def test_status_verbose_keeps_stdout_clean(capsys, calls, tmp_path):
    spec = make_spec(tmp_path)
    calls(LIST, data=up_world(spec))
    code, out, err = run(capsys, "-v", "status", "--tenant", "acme", "--json", "--no-health")
    assert code == 0
    assert [row["health"] for row in json.loads(out)] == ["-", "-", "-"]
    assert err == "  . read: lxc list --format json\n"
    assert calls.made() == calls.expected


def test_status_table_with_a_stopped_and_an_unhealthy_instance(capsys, calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec)
    world[1]["status"] = "Stopped"
    world[1]["state"]["network"] = None
    calls(LIST, data=world)
    calls(["lxc", "exec", "acme-tables", "--", "sh", "/usr/local/lib/botlxc/health.sh"],
          stdout="tables: not accepting connections on 127.0.0.1:5432 (tables.service "
                 "failed)\n", returncode=1)
    health_reads(calls, spec, ["cache"])
    code, out, err = run(capsys, "status", "--tenant", "acme")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "NAME               STATE    IPV4            PORTS                        HEALTH",
        "acme-tables        RUNNING  10.101.177.23   5432->5432                   unhealthy: "
        "tables: not accepting connections on 127.0.0.1:5432 (tables.service failed)",
        "acme-drive         STOPPED  -               9000->9000                   stopped",
        "acme-cache         RUNNING  10.101.177.25   6379->6379                   healthy",
        "network: lxdbr0 (shared with other tenants: --shared-network)"]
    assert calls.made() == calls.expected


def test_status_of_an_absent_tenant(capsys, calls):
    calls(LIST, data=other_tenant({"tables": 5433}))
    calls(LIST, data=[])
    assert run(capsys, "status", "--tenant", "acme", "--json") == (0, "[]\n", "")
    assert run(capsys, "status", "--tenant", "acme") == (
        0, "", "tenant acme has no containers (botlxc up --tenant acme)\n")
    assert calls.made() == calls.expected


def test_a_failed_command_is_exit_3_naming_it(capsys, calls):
    calls(LIST, returncode=1, stderr='Error: LXD unix socket "/var/lib/lxd/unix.socket" not '
                                     'accessible: connect: connection refused\n')
    code, out, err = run(capsys, "status", "--tenant", "acme")
    assert (code, out) == (3, "")
    assert_one_line_error(err, 'list instances: command failed (exit 1): lxc list --format '
                               'json -- Error: LXD unix socket "/var/lib/lxd/unix.socket" not '
                               'accessible: connect: connection refused')


# ----------------------------------------------------------------------------- down


def test_down_dry_run_prints_the_runbook_on_stdout(capsys, calls, tmp_path):
    spec = make_spec(tmp_path)
    calls(LIST, data=up_world(spec, installed=False) + other_tenant({"tables": 5433}))
    code, out, err = run(capsys, "down", "--tenant", "acme", "--dry-run", "-c", "cache",
                         "-c", "tables")
    assert (code, err) == (0, "")
    assert out == (
        "#!/usr/bin/env bash\n# botlxc %s runbook: the changes botlxc would make, in order.\n"
        "set -eu\n\n"
        "# stop acme-tables, its services shut down cleanly\n"
        "lxc stop acme-tables --timeout 120\n\n"
        "# lift acme-tables's delete protection (botlxc set it)\n"
        "lxc config unset acme-tables security.protection.delete\n\n"
        "# delete instance acme-tables (host dirs stay)\nlxc delete acme-tables\n\n"
        "# stop acme-cache, its services shut down cleanly\n"
        "lxc stop acme-cache --timeout 120\n\n"
        "# lift acme-cache's delete protection (botlxc set it)\n"
        "lxc config unset acme-cache security.protection.delete\n\n"
        "# delete instance acme-cache (host dirs stay)\nlxc delete acme-cache\n"
        % botlxc.VERSION)
    assert calls.made() == calls.expected
    assert (tmp_path / "stack" / "cache" / "data").is_dir()


def test_down_unknown_component_is_exit_2(capsys, fp):
    code, out, err = run(capsys, "down", "--tenant", "acme", "-c", "llama")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "unknown component 'llama' (known: tables, drive, cache, llm, "
                               "email)")
    assert list(fp.calls) == []


def test_a_listen_address_beyond_loopback_warns_about_tls(capsys, fp, tmp_path):
    code, out, err = run(capsys, "up", "--tenant", "acme", "--listen", "0.0.0.0",
                         "--image", "bad image")
    assert code == 2  # refused for its image, after the warning: nothing ran
    assert err.startswith("warning: --listen 0.0.0.0: PostgreSQL, S3 and Valkey then answer "
                          "beyond this host without TLS")
    assert list(fp.calls) == []
