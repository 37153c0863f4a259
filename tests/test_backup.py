"""Backups at the seam: the bundle take_backup writes (literal transcript, manifest, sums),
what load_bundle refuses, retention, the schedule's files, restore's refusal to overwrite
data, and the CLI's one-line errors.

The fakes do what the faked command would do to the bundle dir (install -d makes the dir,
the backup stream is written into the fd botlxc hands over, install copies the secrets, mv
renames), so the in-process manifest and sums are computed over real files.
"""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

import botlxc
from conftest import ANY, LIST, facts, make_spec, master_text, up_world

LIB = "/usr/local/lib/botlxc"
COMPS = ("tables", "drive", "cache")
#: What each container's backup.counts holds (and counts.sh prints on a restored copy).
COUNTS = {"tables": "rows:public.bots\t3\nrows:public.users\t12\n",
          "drive": "objects:botserver\t7\nbytes:botserver\t4096\n",
          "cache": "keys:db0\t5\n"}
PARSED = {"tables": {"rows:public.bots": 3, "rows:public.users": 12},
          "drive": {"objects:botserver": 7, "bytes:botserver": 4096},
          "cache": {"keys:db0": 5}}
#: The stream each container's backup.sh writes (bytes: a tar is no text).
TARS = {c: b"%s tar stream \x00\xff\n" % c.encode() * (i + 1) for i, c in enumerate(COMPS)}
SUMMARY = {"tables": "PostgreSQL 15", "drive": "S3 object storage", "cache": "Valkey 8"}
ENGINE = {"tables": "", "drive": "rclone", "cache": ""}


def run(capsys, *argv):
    code = botlxc.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err, message):
    return err.startswith("botlxc: error: ") and message in err and err.count("\n") == 1


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def acme(tmp_path):
    spec = make_spec(tmp_path)
    return spec, up_world(spec)


def op_for(calls, world, dry_run=False, host=None):
    calls(LIST, data=world)
    return botlxc.Op("acme", botlxc.Runner(dry_run), host or facts())


def expect(calls, argv, callback=None, **kw):
    """Like calls(argv, ...), with a callback that does to the disk what the command would."""
    pattern, run = [], 0
    for arg in list(argv) + [None]:
        if arg is ANY:
            run += 1
            continue
        if run:  # pytest-subprocess takes no two any() in a row: one for the run
            pattern.append(calls.fp.any(min=run, max=run))
            run = 0
        if arg is not None:
            pattern.append(arg)
    calls.fp.register(pattern, callback=callback, **kw)
    calls.expected.append(list(argv))


# ----------------------------------------------------------------------------- what the fakes do

def make_dirs(process):  # install -d -m 0700 DIR...
    for path in process.args[4:]:
        os.makedirs(path, mode=0o700, exist_ok=True)


def copy_0600(process):  # install -m 0600 SRC DEST
    shutil.copyfile(process.args[3], process.args[4])
    os.chmod(process.args[4], 0o600)


def rename(process):  # mv --no-target-directory SRC DEST
    os.rename(process.args[2], process.args[3])


def remove_tree(process):  # rm -rf --one-file-system PATH...
    for path in process.args[3:]:
        shutil.rmtree(path, ignore_errors=True)


def stream(data, seen):
    """backup.sh: its tar on stdout, which botlxc points at the bundle's file."""
    def write(process):
        fd = process.kwargs["stdout"]
        seen.append((os.readlink("/proc/self/fd/%d" % fd), os.fstat(fd).st_mode & 0o777))
        os.write(fd, data)
    return write


def backup_calls(calls, spec, comps=COMPS, new_root=True):
    """The commands of one backup (paths with the stamp unknown: ANY); returns what the
    streams saw of the file they were given. new_root: the dir for bundles is made too (an
    existing one keeps its mode)."""
    seen = []
    if new_root:
        expect(calls, ["install", "-d", "-m", "0700", ANY], make_dirs)
    expect(calls, ["install", "-d", "-m", "0700", ANY], make_dirs)
    for comp in comps:
        name = spec.name(comp)
        expect(calls, ["lxc", "exec", name, "--", "sh", LIB + "/backup.sh"],
               stream(TARS[comp], seen))
        expect(calls, ["install", "-m", "0600", ANY, ANY], copy_0600)
        calls(["lxc", "exec", name, "--", "cat", LIB + "/backup.counts"], stdout=COUNTS[comp])
    expect(calls, ["mv", "--no-target-directory", ANY, ANY], rename)
    return seen


# ----------------------------------------------------------------------------- the bundle


def test_a_backup_streams_each_component_into_a_partial_dir_then_renames(
        calls, acme, tmp_path):
    spec, world = acme
    op = op_for(calls, world)
    seen = backup_calls(calls, spec)
    root = tmp_path / "backups"
    final = botlxc.take_backup(op, str(root))
    assert final.parent == root and re.fullmatch(r"acme-[0-9]{8}-[0-9]{6}", final.name)
    partial, S = str(final) + ".partial", str(tmp_path / "stack")
    transcript = [LIST, ["install", "-d", "-m", "0700", str(root)],
                  ["install", "-d", "-m", "0700", partial]]
    for comp in COMPS:
        transcript += [
            ["lxc", "exec", "acme-" + comp, "--", "sh", LIB + "/backup.sh"],
            ["install", "-m", "0600", "%s/.botlxc/secrets/%s.env" % (S, comp),
             "%s/%s.secrets" % (partial, comp)],
            ["lxc", "exec", "acme-" + comp, "--", "cat", LIB + "/backup.counts"]]
    transcript.append(["mv", "--no-target-directory", partial, str(final)])
    assert calls.made() == transcript
    # each stream went into a new 0600 file of the partial dir, never through a path of its own
    assert seen == [("%s/%s.tar" % (partial, c), 0o600) for c in COMPS]
    assert [a.stdout for a in op.runner.actions if a.stdout] == [
        "%s/%s.tar" % (partial, c) for c in COMPS]
    assert not os.path.exists(partial)
    assert sorted(os.listdir(final)) == sorted(
        ["manifest.json", "SHA256SUMS"] + ["%s.%s" % (c, x) for c in COMPS
                                           for x in ("tar", "secrets")])
    for entry in os.listdir(final):
        assert os.stat(final / entry).st_mode & 0o777 == 0o600, entry


def test_the_manifest_says_versions_counts_sizes_and_sums(calls, acme, tmp_path):
    spec, world = acme
    op = op_for(calls, world)
    backup_calls(calls, spec)
    final = botlxc.take_backup(op, str(tmp_path / "backups"))
    manifest = json.loads((final / "manifest.json").read_text())
    created = manifest.pop("created")
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", created)
    files = {}
    for comp in COMPS:
        secrets = master_text(comp).encode()
        assert (final / (comp + ".secrets")).read_bytes() == secrets
        assert (final / (comp + ".tar")).read_bytes() == TARS[comp]
        files[comp + ".tar"] = {"size": len(TARS[comp]), "sha256": sha(TARS[comp])}
        files[comp + ".secrets"] = {"size": len(secrets), "sha256": sha(secrets)}
    assert manifest == {
        "format": 1, "botlxc": botlxc.VERSION, "tenant": "acme",
        "stack": str(tmp_path / "stack"),
        "components": {c: {"engine": ENGINE[c], "summary": SUMMARY[c], "counts": PARSED[c]}
                       for c in COMPS},
        "files": files, "settings": {}}
    # SHA256SUMS: sha256sum's own format, every file and the manifest, sorted by name
    sums = dict(files, **{"manifest.json": {"sha256": sha((final / "manifest.json")
                                                          .read_bytes())}})
    assert (final / "SHA256SUMS").read_text() == "".join(
        "%s  %s\n" % (sums[name]["sha256"], name) for name in sorted(sums))
    check = ["sha256sum", "--strict", "-c", "SHA256SUMS"]
    calls.fp.pass_command(check)
    proc = subprocess.run(check, cwd=str(final), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": OK\n") == 7
    # and what botlxc itself reads back is the same
    loaded = botlxc.load_bundle(str(final))
    assert loaded["path"] == final and loaded["components"] == manifest["components"]


def test_keep_prunes_older_bundles_of_the_tenant_after_the_new_one(calls, tmp_path):
    spec = make_spec(tmp_path, components=("cache",))
    world = up_world(spec)
    root = tmp_path / "backups"
    for name in ("acme-20250101-000000", "acme-20250102-000000", "acme-b-20250101-000000"):
        (root / name).mkdir(parents=True)
    op = op_for(calls, world)
    backup_calls(calls, spec, ("cache",), new_root=False)
    calls(["rm", "-rf", "--one-file-system", str(root / "acme-20250101-000000")])
    calls(["rm", "-rf", "--one-file-system", str(root / "acme-20250102-000000")])
    final = botlxc.take_backup(op, str(root), keep=1)
    assert calls.made() == calls.expected
    assert final.is_dir()


def test_a_stream_that_fails_leaves_no_file_and_no_partial_bundle(calls, tmp_path):
    spec = make_spec(tmp_path, components=("tables",))
    world = up_world(spec)
    op = op_for(calls, world)
    root = tmp_path / "backups"
    expect(calls, ["install", "-d", "-m", "0700", str(root)], make_dirs)
    expect(calls, ["install", "-d", "-m", "0700", ANY], make_dirs)
    expect(calls, ["lxc", "exec", "acme-tables", "--", "sh", LIB + "/backup.sh"],
           stream(b"half a dump", []), returncode=1,
           stderr="pg_dump: error: connection to server failed\n")
    expect(calls, ["rm", "-rf", "--one-file-system", ANY], remove_tree)
    with pytest.raises(botlxc.CommandFailed, match="connection to server failed") as failed:
        botlxc.take_backup(op, str(root))
    assert failed.value.exit_code == 3
    assert calls.made() == calls.expected
    partial = calls.made()[2][-1]
    assert partial.endswith(".partial") and calls.made()[-1][-1] == partial
    assert os.listdir(root) == []


def test_a_dry_run_prints_the_streams_as_redirections(capsys, calls, acme, tmp_path):
    spec, world = acme
    calls(LIST, data=world)
    for comp in COMPS:  # a read: today it runs in a dry run too (its answer is not used)
        calls(["lxc", "exec", "acme-" + comp, "--", "cat", LIB + "/backup.counts"],
              returncode=1, stderr="cat: No such file or directory\n")
    root = tmp_path / "backups"
    code, out, err = run(capsys, "backup", "-t", "acme", "--to", str(root), "--dry-run")
    assert code == 0 and calls.made()[0] == LIST
    assert all(argv in calls.expected for argv in calls.made())  # nothing but reads ran
    lines = [line for line in out.splitlines() if line.startswith("lxc exec")]
    assert len(lines) == 3
    for comp, line in zip(COMPS, lines):
        assert re.fullmatch(r"lxc exec acme-%s -- sh %s/backup\.sh > %s/acme-[0-9]{8}-"
                            r"[0-9]{6}\.partial/%s\.tar" % (comp, LIB, re.escape(str(root)),
                                                            comp), line), line
    assert not root.exists()


# ----------------------------------------------------------------------------- refusals


def test_a_stopped_container_is_named_and_nothing_runs(calls, acme, tmp_path):
    spec, world = acme
    world[1]["status"] = "Stopped"
    op = op_for(calls, world)
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.take_backup(op, str(tmp_path / "backups"))
    assert failed.value.exit_code == 1
    assert str(failed.value) == ("backup: acme-drive is not serving (botlxc start / botlxc up "
                                 "first)")
    assert calls.made() == [LIST] and op.runner.actions == []


def test_a_container_whose_install_never_finished_is_not_backed_up(calls, tmp_path):
    spec = make_spec(tmp_path)
    world = up_world(spec, installed=False)
    op = op_for(calls, world)
    with pytest.raises(botlxc.BotlxcError, match="acme-tables, acme-drive, acme-cache are "
                                                 "not serving"):
        botlxc.take_backup(op, str(tmp_path / "backups"))
    assert calls.made() == [LIST] and op.runner.actions == []


def to_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    return tmp_path / "link", "is a symbolic link"


def to_open_dir(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    return tmp_path / "open", "other users can write it"


def to_below_open_dir(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    return tmp_path / "open" / "backups", "can be written by other users"


def to_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "backups", "is not a directory"


@pytest.mark.parametrize("where", [to_link, to_open_dir, to_below_open_dir, to_a_file])
def test_a_to_dir_others_could_redirect_is_refused(calls, acme, tmp_path, where):
    spec, world = acme
    to, message = where(tmp_path)
    op = op_for(calls, world)
    with pytest.raises(botlxc.BadInput) as failed:
        botlxc.take_backup(op, str(to))
    assert failed.value.exit_code == 2
    assert str(failed.value).startswith("refusing --to %s: " % to) and message in str(
        failed.value)
    assert calls.made() == [LIST] and op.runner.actions == []


def test_parse_counts_takes_name_tab_count_lines():
    assert botlxc.parse_counts("", "x") == {}
    assert botlxc.parse_counts(None, "x") == {}
    assert botlxc.parse_counts(COUNTS["tables"], "x") == PARSED["tables"]
    assert botlxc.parse_counts("a name with spaces\t0\n", "x") == {"a name with spaces": 0}
    assert botlxc.parse_counts("n" * 200 + "\t1", "x") == {"n" * 200: 1}


@pytest.mark.parametrize("text", ["x\t-1", "no tab", "x\t1.5", "x\t", "\t3", "x\t1\t2",
                                  "x\t 1", "n" * 201 + "\t1", "x\t" + "9" * 19,
                                  "rows\t3\nbad line\n"])
def test_parse_counts_refuses_anything_else_naming_the_container(text):
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.parse_counts(text, "acme-tables")
    assert failed.value.exit_code == 1
    assert str(failed.value).startswith("acme-tables: not a counts line: ")
    assert len(str(failed.value)) < 140  # the container's text is cut, not echoed whole


def test_parse_counts_refuses_a_flood():
    with pytest.raises(botlxc.BotlxcError, match="more than 100000 counts lines"):
        botlxc.parse_counts("x\t1\n" * 100001, "acme-tables")


def test_count_differences_name_each_key_that_differs():
    assert botlxc.count_differences({"a": 1, "b": 2, "same": 4}, {"b": 3, "c": 4, "same": 4}) \
        == ["a 1 != absent", "b 2 != 3", "c absent != 4"]
    assert botlxc.count_differences(PARSED["tables"], dict(PARSED["tables"])) == []
    assert botlxc.count_differences({}, {}) == []


# ----------------------------------------------------------------------------- load_bundle


def write_bundle(root, tenant="acme", comps=COMPS, edit=None):
    """A bundle as take_backup writes one; edit(manifest) changes the manifest before the
    sums are written (so it still matches SHA256SUMS)."""
    bundle = root / ("%s-20251127-101500" % tenant)
    bundle.mkdir(parents=True, mode=0o700)
    files = {}
    for comp in comps:
        for name, data in ((comp + ".tar", TARS[comp]),
                           (comp + ".secrets", master_text(comp).encode())):
            (bundle / name).write_bytes(data)
            files[name] = {"size": len(data), "sha256": sha(data)}
    manifest = {"format": 1, "botlxc": botlxc.VERSION, "tenant": tenant,
                "created": "2025-11-27T10:15:00Z", "stack": "/srv/" + tenant,
                "components": {c: {"engine": ENGINE[c], "summary": SUMMARY[c],
                                   "counts": PARSED[c]} for c in comps},
                "files": files}
    if edit:
        edit(manifest)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (bundle / "manifest.json").write_text(text)
    sums = {name: entry["sha256"] for name, entry in files.items()}
    sums["manifest.json"] = sha(text.encode())
    (bundle / "SHA256SUMS").write_text("".join("%s  %s\n" % (sums[n], n) for n in sorted(sums)))
    return bundle


def flip_a_byte(path, at=0):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_written_bundle_loads(fp, tmp_path):
    bundle = write_bundle(tmp_path)
    manifest = botlxc.load_bundle(str(bundle))
    assert manifest["path"] == bundle and sorted(manifest["components"]) == sorted(COMPS)
    assert list(fp.calls) == []


def test_a_bundle_that_does_not_exist(fp, tmp_path):
    with pytest.raises(botlxc.BadInput) as failed:
        botlxc.load_bundle(str(tmp_path / "nothing-here"))
    assert failed.value.exit_code == 2
    assert str(failed.value) == "no bundle at %s" % (tmp_path / "nothing-here")


def test_a_dir_without_manifest_is_not_a_bundle(fp, tmp_path):
    (tmp_path / "some-dir").mkdir()
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.load_bundle(str(tmp_path / "some-dir"))
    assert failed.value.exit_code == 1
    assert str(failed.value) == ("bundle %s: no manifest.json or SHA256SUMS: not a botlxc "
                                 "backup" % (tmp_path / "some-dir"))


@pytest.mark.parametrize("name", ["manifest.json"] + ["%s.%s" % (c, x) for c in COMPS
                                                      for x in ("tar", "secrets")])
@pytest.mark.parametrize("where", ["first", "inside"])
def test_one_changed_byte_anywhere_is_named(fp, tmp_path, name, where):
    bundle = write_bundle(tmp_path)
    data = (bundle / name).read_bytes()
    if where == "first":
        at = 0
    elif name == "manifest.json":  # still JSON: "2025-11-27" -> "3025-11-27"
        at = data.index(b"2025-11-27")
    else:
        at = len(data) // 2
    flip_a_byte(bundle / name, at)
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.load_bundle(str(bundle))
    assert failed.value.exit_code == 1
    if name == "manifest.json" and at == 0:  # "{" -> "z": no longer JSON
        assert str(failed.value).startswith("bundle %s: manifest.json is damaged (" % bundle)
    elif name == "manifest.json":
        assert str(failed.value) == ("bundle %s: manifest.json does not match its sum in "
                                     "SHA256SUMS (changed or damaged)" % bundle)
    else:
        assert str(failed.value) == ("bundle %s: %s does not match its sum in the manifest "
                                     "(changed or damaged)" % (bundle, name))


def test_a_changed_sums_line_is_caught_too(fp, tmp_path):
    bundle = write_bundle(tmp_path)
    sums = bundle / "SHA256SUMS"
    sums.write_text(re.sub(r"^[0-9a-f]{64}(?=  drive\.tar$)", "0" * 64, sums.read_text(),
                           flags=re.M))
    with pytest.raises(botlxc.BotlxcError, match="drive.tar does not match its sum"):
        botlxc.load_bundle(str(bundle))


def test_a_file_swapped_for_a_link_is_refused(fp, tmp_path):
    bundle = write_bundle(tmp_path)
    (tmp_path / "elsewhere.tar").write_bytes(TARS["cache"])
    (bundle / "cache.tar").unlink()
    (bundle / "cache.tar").symlink_to(tmp_path / "elsewhere.tar")
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.load_bundle(str(bundle))
    assert str(failed.value) == ("bundle %s: cache.tar is missing or not a regular file"
                                 % bundle)


def test_a_missing_file_is_named(fp, tmp_path):
    bundle = write_bundle(tmp_path)
    (bundle / "tables.secrets").unlink()
    with pytest.raises(botlxc.BotlxcError, match="tables.secrets is missing or not a regular"):
        botlxc.load_bundle(str(bundle))


def add_unknown_component(manifest):
    manifest["components"]["mail"] = {"engine": "", "summary": "mail", "counts": {}}


def drop_a_file(manifest):
    del manifest["files"]["drive.secrets"]


def file_outside(manifest):
    manifest["files"]["../../etc/shadow"] = manifest["files"]["cache.tar"]


def other_format(manifest):
    manifest["format"] = 2


def no_components(manifest):
    manifest["components"] = {}


def bad_tenant(manifest):
    manifest["tenant"] = "../root"


@pytest.mark.parametrize("edit, code, message", [
    (add_unknown_component, 1, "components ['mail'] are not botlxc's"),
    (no_components, 1, "components [] are not botlxc's"),
    (drop_a_file, 1, "drive.secrets is missing from the manifest"),
    (file_outside, 1, "../../etc/shadow is missing or not a regular file"),
    (other_format, 1, "format 2; this botlxc reads format 1"),
    (bad_tenant, 2, "invalid tenant name '../root'"),
])
def test_a_manifest_botlxc_did_not_write_is_refused(fp, tmp_path, edit, code, message):
    bundle = write_bundle(tmp_path, edit=edit)
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.load_bundle(str(bundle))
    assert failed.value.exit_code == code
    assert message in str(failed.value)


# ----------------------------------------------------------------------------- verify, restore


def verify_calls(calls, bundle, verify_out="", returncode=0, stderr=""):
    dest = LIB + "/restore/tables.tar"
    calls(["lxc", "exec", "acme-tables", "--", "rm", "-f", "--", dest])
    calls(["lxc", "file", "push", str(bundle / "tables.tar"), "acme-tables" + dest,
           "--create-dirs", "--mode", "0600"])
    calls(["lxc", "exec", "acme-tables", "--", "sh", LIB + "/verify.sh"], stdout=verify_out,
          returncode=returncode, stderr=stderr)
    calls(["lxc", "exec", "acme-tables", "--", "rm", "-f", "--", dest])


def test_verify_test_restores_the_dump_and_compares_the_counts(calls, acme, tmp_path):
    spec, world = acme
    bundle = write_bundle(tmp_path / "backups")
    op = op_for(calls, world)
    verify_calls(calls, bundle, COUNTS["tables"])
    manifest, checked = botlxc.verify_bundle(op, str(bundle))
    assert checked == ["tables"] and calls.made() == calls.expected


def test_verify_with_other_counts_names_them(calls, acme, tmp_path):
    spec, world = acme
    bundle = write_bundle(tmp_path / "backups")
    op = op_for(calls, world)
    verify_calls(calls, bundle, "rows:public.bots\t2\nrows:public.users\t12\n")
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.verify_bundle(op, str(bundle))
    assert failed.value.exit_code == 1
    assert str(failed.value) == ("bundle %s: tables.tar restores with other counts than it "
                                 "was taken with: rows:public.bots 3 != 2" % bundle)


def test_a_dump_that_does_not_restore_still_removes_the_upload(calls, acme, tmp_path):
    spec, world = acme
    bundle = write_bundle(tmp_path / "backups")
    op = op_for(calls, world)
    verify_calls(calls, bundle, returncode=1, stderr="pg_restore: error: input file is "
                                                     "too short\n")
    with pytest.raises(botlxc.BotlxcError, match="tables.tar does not restore: pg_restore: "
                                                 "error: input file is too short"):
        botlxc.verify_bundle(op, str(bundle))
    assert calls.made() == calls.expected


def test_restore_into_a_tenant_holding_data_needs_force_changes_nothing(
        calls, acme, tmp_path):
    spec, world = acme
    bundle = write_bundle(tmp_path / "backups")
    op = op_for(calls, world)
    for comp in COMPS:
        calls(["lxc", "exec", "acme-" + comp, "--", "sh", LIB + "/counts.sh"],
              stdout=COUNTS[comp] if comp != "cache" else "keys:db0\t0\n")
    before = {p: p.read_bytes() for p in (tmp_path / "stack").rglob("*") if p.is_file()}
    with pytest.raises(botlxc.BadInput) as failed:
        botlxc.restore_bundle(op, str(bundle), force=False)
    assert failed.value.exit_code == 2
    assert str(failed.value) == (
        "tenant acme holds data (acme-drive: bytes:botserver 4096, objects:botserver 7; "
        "acme-tables: rows:public.bots 3, rows:public.users 12): --force replaces it, after "
        "a snapshot of it")
    assert calls.made() == calls.expected  # the list and three counts: reads only
    assert op.runner.actions == []
    assert {p: p.read_bytes() for p in (tmp_path / "stack").rglob("*") if p.is_file()} \
        == before


def test_restore_cannot_tell_about_a_stopped_container_so_needs_force(calls, acme, tmp_path):
    spec, world = acme
    world[0]["status"] = "Stopped"
    bundle = write_bundle(tmp_path / "backups")
    op = op_for(calls, world)
    calls(["lxc", "exec", "acme-drive", "--", "sh", LIB + "/counts.sh"])
    calls(["lxc", "exec", "acme-cache", "--", "sh", LIB + "/counts.sh"])
    with pytest.raises(botlxc.BadInput, match=r"\(acme-tables: not serving, so its data "
                                              r"cannot be counted\)"):
        botlxc.restore_bundle(op, str(bundle), force=False)
    assert calls.made() == calls.expected and op.runner.actions == []


# ----------------------------------------------------------------------------- retention


@pytest.fixture
def backups(tmp_path):
    root = tmp_path / "backups"
    for name in ("a-20250101-000000", "a-20250103-000000", "a-20250102-000000",
                 "a-b-20250101-000000", "a-b-20250104-000000", "a-20250105-000000.partial",
                 "a-20250106-000000.partial", "ab-20250101-000000", "a-latest", "lost+found"):
        (root / name).mkdir(parents=True)
    (root / "a-20250107-000000").write_text("a file, not a bundle")
    (root / "a-20250108-000000").symlink_to(root / "a-20250101-000000")
    return root


def test_list_bundles_are_the_tenants_complete_ones_oldest_first(fp, backups, tmp_path):
    assert botlxc.list_bundles(backups, "a") == [
        "a-20250101-000000", "a-20250102-000000", "a-20250103-000000"]
    assert botlxc.list_bundles(backups, "a-b") == ["a-b-20250101-000000", "a-b-20250104-000000"]
    assert botlxc.list_bundles(backups, "b") == []
    assert botlxc.list_bundles(tmp_path / "nowhere", "a") == []


def test_prune_keeps_the_newest_n_of_this_tenant_only(calls, backups):
    calls(["rm", "-rf", "--one-file-system", str(backups / "a-20250101-000000")])
    botlxc.prune_backups(botlxc.Op("a", botlxc.Runner(), facts()), backups, 2)
    assert calls.made() == calls.expected


def test_prune_counts_the_new_bundle_in(calls, backups):
    op = botlxc.Op("a", botlxc.Runner(dry_run=True), facts())
    botlxc.prune_backups(op, backups, 2, "a-20250109-000000")
    assert [a.argv for a in op.runner.actions] == [
        ["rm", "-rf", "--one-file-system", str(backups / n)]
        for n in ("a-20250101-000000", "a-20250102-000000")]
    assert calls.made() == []


def test_prune_with_fewer_bundles_than_kept_removes_nothing(fp, backups):
    op = botlxc.Op("a-b", botlxc.Runner(), facts())
    botlxc.prune_backups(op, backups, 2)
    botlxc.prune_backups(op, backups, 10000)
    assert op.runner.actions == [] and list(fp.calls) == []


# ----------------------------------------------------------------------------- schedule


def scheduled(*args):
    return shlex.join(botlxc.self_argv() + ["backup", "--tenant", "acme", *args])


def test_a_backup_schedule_is_a_cron_line_without_systemd(fp):
    runner = botlxc.Runner(dry_run=True)
    botlxc.set_schedule(runner, facts(), "acme", "daily", 7, "backup", ["--to", "/srv/bk"])
    (action,) = runner.actions
    assert action.argv == ["install", "-m", "0644", "/dev/stdin",
                           "/etc/cron.d/botlxc-backup-acme"]
    assert action.input == (
        "# botlxc: backups of tenant acme, daily\n"
        "17 3 * * * root %s >>/var/log/botlxc-backup-acme.log 2>&1\n"
        % scheduled("--keep", "7", "--to", "/srv/bk"))
    assert list(fp.calls) == []


def test_a_backup_schedule_is_a_timer_with_systemd(fp):
    runner = botlxc.Runner(dry_run=True)
    botlxc.set_schedule(runner, facts(systemd=True), "acme", "weekly", 4, "backup",
                        ["--to", "/srv/bk"])
    unit = "/etc/systemd/system/botlxc-backup-acme"
    assert [a.argv for a in runner.actions] == [
        ["install", "-m", "0644", "/dev/stdin", unit + ".service"],
        ["install", "-m", "0644", "/dev/stdin", unit + ".timer"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "botlxc-backup-acme.timer"]]
    assert runner.actions[0].input == (
        "[Unit]\nDescription=botlxc backup of tenant acme\n\n[Service]\nType=oneshot\n"
        "ExecStart=%s\n" % scheduled("--keep", "4", "--to", "/srv/bk"))
    assert runner.actions[1].input == (
        "[Unit]\nDescription=botlxc backups of tenant acme, weekly\n\n[Timer]\n"
        "OnCalendar=Sun *-*-* 03:17:00\nPersistent=true\n\n[Install]\n"
        "WantedBy=timers.target\n")
    assert list(fp.calls) == []


def test_schedule_files_of_each_kind(fp):
    assert [str(p) for p in botlxc.schedule_files(facts(), "acme", "backup")] == [
        "/etc/cron.d/botlxc-backup-acme"]
    assert [str(p) for p in botlxc.schedule_files(facts(systemd=True), "acme", "backup")] == [
        "/etc/systemd/system/botlxc-backup-acme.timer",
        "/etc/systemd/system/botlxc-backup-acme.service"]
    assert set(botlxc.SCHEDULED) == {"snapshot", "backup"}


def write_schedule(host, kind, every, keep):
    """The files set_schedule writes, written where host.etc_dir says."""
    runner = botlxc.Runner(dry_run=True)
    botlxc.set_schedule(runner, host, "acme", every, keep, kind,
                        ["--to", "/srv/bk"] if kind == "backup" else [])
    for action in runner.actions:
        if action.argv[0] == "install":
            os.makedirs(os.path.dirname(action.argv[-1]), exist_ok=True)
            with open(action.argv[-1], "w") as handle:
                handle.write(action.input)
    return botlxc.schedule_files(host, "acme", kind)


@pytest.mark.parametrize("systemd", [False, True])
def test_schedule_of_describes_and_unset_removes_it(fp, tmp_path, systemd):
    host = facts(systemd=systemd, etc_dir=str(tmp_path / "etc"))
    assert botlxc.schedule_of(host, "acme", "backup") is None
    files = write_schedule(host, "backup", "weekly", 4)
    assert botlxc.schedule_of(host, "acme", "backup") == "weekly, keeping 4 (%s)" % files[0]
    assert botlxc.schedule_of(host, "acme", "snapshot") is None
    runner = botlxc.Runner(dry_run=True)
    botlxc.unset_schedule(runner, host, "acme", "backup")
    assert [a.argv for a in runner.actions] == (
        [["systemctl", "disable", "--now", "botlxc-backup-acme.timer"]] if systemd else []) + [
        ["rm", "-f", *map(str, files)]]


def test_unset_without_a_schedule_changes_nothing(fp, tmp_path):
    runner = botlxc.Runner(dry_run=True)
    botlxc.unset_schedule(runner, facts(etc_dir=str(tmp_path / "etc")), "acme", "backup")
    assert runner.actions == []


@pytest.mark.parametrize("systemd", [False, True])
def test_destroy_removes_both_kinds_of_schedule(calls, acme, tmp_path, systemd):
    spec, world = acme
    host = facts(systemd=systemd, etc_dir=str(tmp_path / "etc"))
    files = write_schedule(host, "snapshot", "daily", 7) + write_schedule(
        host, "backup", "weekly", 4)
    op = op_for(calls, world, dry_run=True, host=host)
    calls(["lxc", "query", "/1.0/networks?recursion=1"], data=[])
    calls(["lxc", "query", "/1.0/network-acls?recursion=1"], data=[])
    botlxc.destroy(op, purge=False)
    removed = [a.argv[2:] for a in op.runner.actions if a.argv[:2] == ["rm", "-f"]]
    assert removed == [list(map(str, files[:len(files) // 2])),
                       list(map(str, files[len(files) // 2:]))]
    disabled = [a.argv for a in op.runner.actions if a.argv[:2] == ["systemctl", "disable"]]
    assert disabled == ([["systemctl", "disable", "--now", "botlxc-snapshot-acme.timer"],
                         ["systemctl", "disable", "--now", "botlxc-backup-acme.timer"]]
                        if systemd else [])


# ----------------------------------------------------------------------------- CLI


def test_backup_help_names_its_subcommands(capsys, fp):
    code, out, err = run(capsys, "backup", "--help")
    assert code == 0 and err == ""
    assert out.startswith("Usage: botlxc backup [OPTIONS] [COMMAND] [ARGS]...")
    for word in ("--tenant", "--to", "--keep", "--dry-run", "/var/backups/botlxc",
                 "verify", "schedule"):
        assert word in out, word
    assert list(fp.calls) == []


@pytest.mark.parametrize("argv, message", [
    (["backup", "schedule"], "give --every hourly|daily|weekly with --keep N, or --off"),
    (["backup", "schedule", "--every", "daily"], "--every needs --keep N"),
    (["backup", "schedule", "--every", "daily", "--keep", "3", "--off"],
     "give --every hourly|daily|weekly with --keep N, or --off"),
    (["backup", "schedule", "--every", "daily", "--keep", "3", "--to", "/srv/a;b"],
     "invalid --to '/srv/a;b': shell metacharacters are not allowed in paths"),
    (["backup", "schedule", "--off", "-t", "Acme"], "invalid tenant name 'Acme'"),
    (["backup", "verify", "/srv/$(id)"], "invalid BUNDLE '/srv/$(id)'"),
    (["backup", "verify", "/x", "-t", "a--b"], "invalid tenant name 'a--b'"),
    (["backup", "--to", "/srv/a|b"], "invalid --to '/srv/a|b'"),
    (["backup", "-t", "a_b"], "invalid tenant name 'a_b'"),
    (["restore", "/srv/a`b`"], "invalid BUNDLE '/srv/a`b`'"),
    (["restore", "/srv/x", "--stack-dir", "/srv/a;b"], "invalid --stack-dir '/srv/a;b'"),
])
def test_bad_input_is_one_line_exit_2_and_runs_nothing(capsys, fp, argv, message):
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert one_line_error(err, message), err
    assert list(fp.calls) == []


def test_verify_of_a_path_that_does_not_exist(capsys, fp, tmp_path):
    code, out, err = run(capsys, "backup", "verify", str(tmp_path / "gone"), "-t", "acme")
    assert (code, out) == (2, "")
    assert err == "botlxc: error: no bundle at %s\n" % (tmp_path / "gone")
    assert list(fp.calls) == []


def test_verify_of_a_damaged_bundle_exits_1_naming_the_file(capsys, fp, tmp_path):
    bundle = write_bundle(tmp_path / "backups")
    flip_a_byte(bundle / "cache.tar", 3)
    code, out, err = run(capsys, "backup", "verify", str(bundle), "-t", "acme")
    assert (code, out) == (1, "")
    assert err == ("botlxc: error: bundle %s: cache.tar does not match its sum in the manifest "
                   "(changed or damaged)\n" % bundle)
    assert list(fp.calls) == []


@pytest.mark.parametrize("content", [None, "{not json", "[]", '{"tenant": ""}'])
def test_restore_of_a_dir_that_is_no_bundle_exits_1(capsys, fp, tmp_path, content):
    where = tmp_path / "not-a-bundle"
    where.mkdir()
    if content is not None:
        (where / "manifest.json").write_text(content)
    code, out, err = run(capsys, "restore", str(where))
    assert (code, out) == (1, "")
    assert err == ("botlxc: error: %s has no readable manifest.json: not a botlxc backup\n"
                   % where)
    assert list(fp.calls) == []


def test_restore_into_a_named_tenant_of_a_dir_that_is_no_bundle_exits_1(capsys, fp, tmp_path):
    (tmp_path / "not-a-bundle").mkdir()
    code, out, err = run(capsys, "restore", str(tmp_path / "not-a-bundle"), "-t", "acme",
                         "--dry-run")
    assert (code, out) == (1, "")
    assert err == ("botlxc: error: bundle %s: no manifest.json or SHA256SUMS: not a botlxc "
                   "backup\n" % (tmp_path / "not-a-bundle"))
    assert list(fp.calls) == []
