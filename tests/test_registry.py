"""A component is data: one COMPONENTS entry plus a template folder, and the generic code
brings it up. The component here exists only in this file and under tmp_path."""
import os
import subprocess

import pytest

import botlxc
from conftest import OWNER, facts, make_spec, register_ready, tenant_instance

V = botlxc.VERSION
C = botlxc.Component
E = botlxc.Engine

#: An optional component with two engines (the second with an operator-supplied binary), a
#: secret of its own length, an .env line, and a device that only a feature turns on.
QUEUE = C(
    name="queue",
    summary="a test queue",
    ports=(botlxc.Port("amqp", 5672), botlxc.Port("admin", 15672, engines=("bin",))),
    files=botlxc._SCRIPTS + (
        ("queue.service.j2", "/etc/systemd/system/queue.service", "0644"),),
    secrets=(("QUEUE_PASSWORD", 24),),
    env=("QUEUE_URL=amqp://gbuser:{QUEUE_PASSWORD}@{host}:{port_amqp}",),
    engines=(E("pkg"),
             E("bin", artifact="/usr/local/bin/queued", title="queue daemon",
               files=(("queued.conf.j2", "/opt/gbo/conf/queued.conf", "0644"),))),
    optional=True,
    devices=(botlxc.Device("gpu", "gpu", (("gputype", "physical"),), when="gpu"),),
)

TEMPLATES = {
    "install.sh.j2": """#!/bin/sh
# install {{ component }} with engine {{ engine }} in {{ tenant }}-{{ component }}
set -eu
{%- if engine == "bin" %}
[ -x /usr/local/bin/queued ] || { echo "queued missing" >&2; exit 1; }
{%- else %}
apt-get -o DPkg::Lock::Timeout=600 install -qy queue-server
{%- endif %}
systemctl enable --now {{ component }}.service
""",
    "health.sh.j2": """#!/bin/sh
set -u
if [ -r {{ secrets_in }} ]; then echo "{{ component }}: ok on {{ ports.amqp }}"; else exit 1; fi
""",
    "queue.service.j2": """[Unit]
Description=botlxc {{ component }} (tenant {{ tenant }})

[Service]
User={{ user }}
ExecStart=/usr/local/bin/queued --port {{ ports.amqp }} --secrets {{ secrets_in }}

[Install]
WantedBy=multi-user.target
""",
    "queued.conf.j2": "admin_port = {{ ports.admin }}\n",
}


@pytest.fixture
def queue(tmp_path, monkeypatch):
    """QUEUE registered, its templates in a dir botlxc searches first."""
    folder = tmp_path / "templates" / "components" / "queue"
    folder.mkdir(parents=True)
    for name, text in TEMPLATES.items():
        (folder / name).write_text(text)
    monkeypatch.setitem(botlxc.COMPONENTS, "queue", QUEUE)
    monkeypatch.setenv(botlxc.TEMPLATES_ENV, str(tmp_path / "templates"))
    return QUEUE


def test_the_registry_derives_the_defaults(queue):
    assert botlxc.DEFAULT_COMPONENTS == ("tables", "drive", "cache")  # no optional one
    assert queue.units == ("queue.service",) and queue.secret_keys == ("QUEUE_PASSWORD",)
    assert botlxc.parse_engines(["bin"]) == {"queue": "bin"}  # the short form
    assert botlxc.parse_engines(["queue=pkg", "minio"]) == {"queue": "pkg", "drive": "minio"}


def test_a_component_defined_as_data_comes_up_through_the_generic_path(calls, tmp_path, queue):
    binary = tmp_path / "queued"
    binary.write_bytes(b"\x7fELF queued")
    sha = botlxc.file_sha256(binary)
    S = str(tmp_path / "stack")
    # What the CLI's `up -c queue --engine bin --artifact queue=PATH --sha256 bin=HEX` checks
    wanted = botlxc.check_up(
        components=("queue",), stack_dir=S, image=None, privileged=None, no_host_ca=False,
        listen="127.0.0.1", ports=(), engines=("bin",), artifacts=("queue=%s" % binary,),
        sums=("bin=" + sha,), containers_only=False, jobs=1, shared_network=True)
    assert wanted["engines"] == {"queue": "bin"}
    assert wanted["artifacts"] == {"queue": (str(binary), sha)}
    spec = botlxc.Spec(tenant="acme", host=facts(), **dict(wanted, features=("gpu",)))

    register_ready(calls)
    dirs = [S + "/queue/" + d for d in ("data", "conf", "logs")]
    ids = OWNER + 65536
    for argv in (
            ["install", "-d", "-m", "0700", S + "/.botlxc"],
            ["install", "-m", "0600", "/dev/stdin", S + "/.botlxc/tenant"],
            ["mkdir", "-p", *dirs],
            ["install", "-D", "-m", "0600", "/dev/stdin", S + "/.botlxc/ids/queue"],
            ["chown", "--no-dereference", "%d:%d" % (ids, ids), *dirs],
            ["lxc", "init", "botlxc/debian-12", "acme-queue", "-c", "security.privileged=false",
             "-c", "user.botlxc.tenant=acme", "-c", "user.botlxc.component=queue",
             "-c", "user.botlxc.version=" + V, "-c", "user.botlxc.stack=" + S,
             "-c", "user.botlxc.engine=bin", "-c", "security.protection.delete=true",
             "-c", "security.idmap.isolated=true", "-c", "security.idmap.base=%d" % ids],
            ["lxc", "config", "device", "add", "acme-queue", "data", "disk",
             "source=%s/queue/data" % S, "path=/opt/gbo/data"],
            ["lxc", "config", "device", "add", "acme-queue", "conf", "disk",
             "source=%s/queue/conf" % S, "path=/opt/gbo/conf"],
            ["lxc", "config", "device", "add", "acme-queue", "logs", "disk",
             "source=%s/queue/logs" % S, "path=/opt/gbo/logs"],
            ["lxc", "config", "device", "add", "acme-queue", "port-5672", "proxy",
             "listen=tcp:127.0.0.1:5672", "connect=tcp:127.0.0.1:5672"],
            ["lxc", "config", "device", "add", "acme-queue", "port-15672", "proxy",
             "listen=tcp:127.0.0.1:15672", "connect=tcp:127.0.0.1:15672"],
            ["lxc", "config", "device", "add", "acme-queue", "gpu", "gpu", "gputype=physical"],
            ["lxc", "start", "acme-queue"],
            ["lxc", "exec", "acme-queue", "--", *botlxc.BOOT_WAIT],
            ["lxc", "exec", "acme-queue", "--", *botlxc.NETWORK_WAIT],
            ["lxc", "exec", "acme-queue", "--", "rm", "-f", "--", "/etc/botlxc/secrets.env",
             "/usr/local/lib/botlxc/install.sh", "/usr/local/lib/botlxc/health.sh",
             "/etc/logrotate.d/botlxc", "/etc/systemd/system/queue.service",
             "/opt/gbo/conf/queued.conf", "/usr/local/bin/queued"],
            ["lxc", "file", "push", S + "/.botlxc/secrets/queue.env",
             "acme-queue/etc/botlxc/secrets.env", "--create-dirs", "--mode", "0600"],
            ["lxc", "file", "push", "-", "acme-queue/usr/local/lib/botlxc/install.sh",
             "--create-dirs", "--mode", "0755"],
            ["lxc", "file", "push", "-", "acme-queue/usr/local/lib/botlxc/health.sh",
             "--create-dirs", "--mode", "0755"],
            ["lxc", "file", "push", "-", "acme-queue/etc/logrotate.d/botlxc",
             "--create-dirs", "--mode", "0644"],
            ["lxc", "file", "push", "-", "acme-queue/etc/systemd/system/queue.service",
             "--create-dirs", "--mode", "0644"],
            ["lxc", "file", "push", "-", "acme-queue/opt/gbo/conf/queued.conf",
             "--create-dirs", "--mode", "0644"],
            ["lxc", "file", "push", str(binary), "acme-queue/usr/local/bin/queued",
             "--create-dirs", "--mode", "0755"],
            ["lxc", "exec", "acme-queue", "--", *botlxc.INSTALL],
            ["lxc", "exec", "acme-queue", "--", *botlxc.HEALTH_WAIT]):
        calls(argv)
    files = botlxc.render_files(spec, "queue")
    calls(["lxc", "config", "set", "acme-queue", "user.botlxc.installed",
           botlxc.digest(*[part for item in files for part in item], sha)])
    runner = botlxc.Runner()

    ports, failures = botlxc.up(runner, spec)

    assert failures == {} and calls.made() == calls.expected
    assert ports == {("queue", "amqp"): 5672, ("queue", "admin"): 15672}
    # the rendered files are what was pushed, with the engine's own file last
    pushed = {a.argv[4]: a.input for a in runner.actions if a.argv[:4] == ["lxc", "file",
                                                                           "push", "-"]}
    assert pushed == {"acme-queue" + dest: content for dest, _, content in files}
    assert pushed["acme-queue/opt/gbo/conf/queued.conf"] == "admin_port = 15672\n"
    assert "[ -x /usr/local/bin/queued ]" in pushed["acme-queue/usr/local/lib/botlxc/install.sh"]
    # its secret has the length it declares, and .env has its line
    master = (tmp_path / "stack/.botlxc/secrets/queue.env").read_text()
    password = master.split("QUEUE_PASSWORD=", 1)[1].splitlines()[0]
    assert len(password) == 24
    assert (tmp_path / "stack/.env").read_text().splitlines()[1:] == [
        "QUEUE_URL=amqp://gbuser:%s@127.0.0.1:5672" % password]
    assert oct(os.stat(tmp_path / "stack/.env").st_mode & 0o777) == "0o600"


def test_its_binary_is_required_before_anything_runs(fp, tmp_path, queue):
    with pytest.raises(botlxc.BadInput, match=r"^queue engine bin needs --artifact bin=PATH "
                       r"\(or =URL with --sha256 bin=HEX\): botlxc does not fetch the queue "
                       r"daemon itself$"):
        botlxc.check_up(components=("queue",), stack_dir=None, image=None, privileged=None,
                        no_host_ca=False, listen="127.0.0.1", ports=(),
                        engines=("queue=bin",), artifacts=(), sums=(), containers_only=False,
                        jobs=1, shared_network=False)
    assert list(fp.calls) == []


def test_its_default_engine_needs_no_binary_and_renders_for_sh(tmp_path, queue):
    spec = botlxc.Spec(tenant="acme", components=("queue",), stack=tmp_path / "stack")
    files = {dest: content for dest, _, content in botlxc.render_files(spec, "queue")}
    assert spec.engine_of("queue") == "pkg"
    assert "/opt/gbo/conf/queued.conf" not in files  # the bin engine's file only
    assert "apt-get -o DPkg::Lock::Timeout=600 install -qy queue-server" in files[
        "/usr/local/lib/botlxc/install.sh"]
    assert [p.name for p in queue.ports_for("pkg")] == ["amqp"]


@pytest.mark.parametrize("engine", ["pkg", "bin"])
def test_its_templates_render_strictly_and_its_scripts_pass_sh_n(fp, tmp_path, queue, engine):
    """What tests/test_templates.py checks of every registered component, for this one."""
    spec = botlxc.Spec(tenant="acme", components=("queue",), stack=tmp_path / "stack",
                       engines={"queue": engine})
    files = botlxc.render_files(spec, "queue")
    assert [dest for dest, _, _ in files] == [d for _, d, _ in queue.files_for(engine)]
    for dest, _mode, content in files:
        assert "{{" not in content and content.endswith("\n"), dest
        if dest.endswith(".sh"):
            path = tmp_path / os.path.basename(dest)
            path.write_text(content)
            fp.pass_command(["sh", "-n", str(path)])
            assert subprocess.run(["sh", "-n", str(path)]).returncode == 0, dest


def test_day2_refuses_to_converge_an_engine_whose_binary_only_up_is_given(tmp_path):
    """same_as (clone, restore, port set, rotate) reads each container's recorded engine."""
    spec = make_spec(tmp_path, engines={"drive": "minio"})
    mine = {c: tenant_instance(spec, c) for c in spec.components}
    op = botlxc.Op("acme", botlxc.Runner(), facts(), _snapshot={
        "all": list(mine.values()), "mine": mine, "foreign": []})
    with pytest.raises(botlxc.BadInput, match=r"^acme-drive runs drive engine minio, whose "
                       r"binary only `up` is given: botlxc up --tenant acme --engine "
                       r"drive=minio --artifact minio=PATH \(with the same options\) does "
                       r"this$"):
        botlxc.same_as(op, mine["tables"])
    same = botlxc.same_as(op, mine["tables"], components=("tables", "cache"))
    assert same.engines == {"tables": "postgresql", "drive": "minio", "cache": "valkey"}
    unknown = dict(mine["cache"], config=dict(mine["cache"]["config"], **{
        "user.botlxc.engine": "keydb"}))
    op._snapshot["mine"]["cache"] = unknown
    with pytest.raises(botlxc.BadInput, match="acme-cache runs cache engine keydb, which this "
                       "botlxc does not know"):
        botlxc.same_as(op, mine["tables"], components=("cache",))
