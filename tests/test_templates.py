"""Every component's templates render under StrictUndefined with the context botlxc uses."""
import re
import subprocess
from pathlib import Path

import jinja2
import pytest

import botlxc
from conftest import facts, make_spec

TEMPLATES = Path(botlxc.__file__).resolve().parent / "templates"
CASES = [(name, engine.name) for name, comp in botlxc.COMPONENTS.items()
         for engine in comp.engines]


def rendered(tmp_path, component, engine, **host):
    spec = make_spec(tmp_path, components=(component,), engines={component: engine},
                     host=facts(**host))
    return botlxc.render_files(spec, component)


@pytest.mark.parametrize("component, engine", CASES)
def test_every_file_renders_completely(tmp_path, component, engine):
    files = rendered(tmp_path, component, engine)
    assert [dest for dest, _, _ in files] == [
        d for _, d, _ in botlxc.COMPONENTS[component].files_for(engine)]
    for dest, mode, content in files:
        assert re.fullmatch(r"0[0-7]{3}", mode)
        assert content.endswith("\n"), dest  # keep_trailing_newline: units need it
        assert "{{" not in content and "{%" not in content, dest


@pytest.mark.parametrize("component, engine", CASES)
def test_shell_scripts_pass_sh_n(tmp_path, fp, component, engine):
    scripts = [(dest, content) for dest, _, content in rendered(tmp_path, component, engine)
               if dest.endswith(".sh")]
    names = [Path(dest).name for dest, _ in scripts]
    assert names[:2] == ["install.sh", "health.sh"]
    # the backup trio comes whole or not at all; verify.sh only with it
    assert names[2:] in ([], ["backup.sh", "restore.sh", "counts.sh"],
                         ["backup.sh", "restore.sh", "counts.sh", "verify.sh"])
    for dest, content in scripts:
        assert content.startswith("#!/bin/sh\n"), dest
        path = tmp_path / Path(dest).name
        path.write_text(content)
        fp.pass_command(["sh", "-n", str(path)])
        proc = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        assert (proc.returncode, proc.stderr) == (0, ""), dest


@pytest.mark.parametrize("component, engine", CASES)
def test_unit_is_named_after_the_component(tmp_path, component, engine):
    """So the chapter's `journalctl -u tables` works."""
    files = {dest: content for dest, _, content in rendered(tmp_path, component, engine)}
    assert botlxc.COMPONENTS[component].units[0].startswith(component)
    for name in botlxc.COMPONENTS[component].units:
        unit = files["/etc/systemd/system/" + name]
        assert "[Service]\n" in unit and "\nExecStart=" in unit and "[Install]\n" in unit


@pytest.mark.parametrize("component, engine", CASES)
def test_the_service_listens_on_its_ports(tmp_path, component, engine):
    everything = "".join(content for _, _, content in rendered(tmp_path, component, engine))
    for port in botlxc.COMPONENTS[component].ports_for(engine):
        assert re.search(r"\b%d\b" % port.port, everything), (component, engine, port)


@pytest.mark.parametrize("component, engine", CASES)
def test_secrets_are_read_from_the_containers_own_copy(tmp_path, component, engine):
    """Pushed by botlxc to /etc/botlxc/secrets.env: never from a host-mounted dir."""
    comp = botlxc.COMPONENTS[component]
    files = {Path(dest).name: content for dest, _, content in
             rendered(tmp_path, component, engine)}
    text = "".join(files.values())
    for key in comp.secret_keys:
        assert key in text, "%s: no file reads %s" % (component, key)
    assert "/etc/botlxc/secrets.env" in text
    assert "/opt/gbo/conf/secrets.env" not in text.replace(
        "rm -f /opt/gbo/conf/secrets.env", "")  # only the legacy copy's removal


def test_every_template_on_disk_is_used():
    """A template nobody renders is dead (or a forgotten entry in COMPONENTS)."""
    for name, comp in botlxc.COMPONENTS.items():
        folder = TEMPLATES / "components" / name
        listed = {template for engine in comp.engines
                  for template, _, _ in comp.files_for(engine.name)}
        sources = "".join((folder / t).read_text() for t in listed if (folder / t).is_file())
        for path in sorted(folder.glob("*")):
            assert path.name in listed or path.name in sources, \
                "templates/components/%s/%s is not in COMPONENTS[%r]'s files" % (
                    name, path.name, name)


def test_undefined_variables_are_errors_not_empty_strings():
    with pytest.raises(jinja2.UndefinedError):
        botlxc.render("components/tables/tables.service.j2", component="tables")
    with pytest.raises(jinja2.UndefinedError):
        botlxc.render("lxd-preseed.yaml.j2", pool="default", driver="dir")


def test_a_missing_template_is_a_clear_error():
    with pytest.raises(botlxc.BotlxcError, match="template components/nosuch/x.j2 is missing"):
        botlxc.render("components/nosuch/x.j2")


def test_the_pip_index_is_read_from_the_pushed_secrets_not_written_in_the_script(tmp_path):
    """Air-gapped hosts: the rclone wheel comes from the host's own pip index, whose URL
    may hold credentials: the script reads it from the 0600 secrets file into pip's
    environment, so it is in no script, argv or runbook."""
    files = dict((Path(d).name, c) for d, _, c in rendered(tmp_path, "drive", "rclone"))
    assert "PIP_INDEX_URL=$(secret PIP_INDEX_URL)" in files["install.sh"]
    assert "--index-url" not in files["install.sh"]


@pytest.mark.parametrize("component, engine", CASES)
def test_installs_survive_an_earlier_run_killed_halfway(tmp_path, component, engine):
    """apt waits for the dpkg lock and finishes an interrupted dpkg first; PostgreSQL is
    initialised beside its place and renamed in, so a half cluster never stays."""
    files = {Path(dest).name: content for dest, _, content in
             rendered(tmp_path, component, engine)}
    script = files["install.sh"]
    assert "dpkg --configure -a" in script
    assert "apt-get -o DPkg::Lock::Timeout=600 install" in script
    assert "apt-get update" not in script.replace("apt-get -o DPkg::Lock::Timeout=600 update",
                                                  "")
    if component == "tables":
        init = script.index('initdb" -D "$PGDATA.init"')
        assert script.index('rm -rf "$PGDATA.init"') < init < script.index(
            'mv "$PGDATA.init" "$PGDATA"')


@pytest.mark.parametrize("component, engine", CASES)
def test_units_run_with_least_privilege(tmp_path, component, engine):
    files = {Path(dest).name: content for dest, _, content in
             rendered(tmp_path, component, engine)}
    for name in botlxc.COMPONENTS[component].units:
        unit = files[name]
        if "Type=oneshot" in unit:  # an umbrella over Debian's own units (email: Postfix)
            continue
        for line in ("NoNewPrivileges=true", "PrivateTmp=true", "ProtectHome=true",
                     "ProtectSystem=strict", "ReadWritePaths=/opt/gbo/data /opt/gbo/logs",
                     "CapabilityBoundingSet=\n"):
            assert line in unit, (component, line)
        assert unit.count("NoNewPrivileges") == 1  # once, from the common include
    logrotate = files["botlxc"]
    assert "su %s %s" % (botlxc.COMPONENTS[component].user,
                         botlxc.COMPONENTS[component].user) in logrotate


def test_the_cache_user_may_not_run_admin_or_dangerous_commands(tmp_path):
    files = {Path(dest).name: content for dest, _, content in rendered(tmp_path, "cache", "valkey")}
    assert "user gbuser on #%s ~* &* +@all -@admin -@dangerous" in files["install.sh"]
