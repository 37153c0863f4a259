"""The optional components as data: llm's model and GPU devices, email's settings and its
IMAP proxy address, the wheel builder's transcript, and local mode's paths."""
import os

import pytest

import botlxc
from conftest import facts, make_spec

GGUF = b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64


def test_llm_gets_its_model_read_only_and_a_gpu_when_asked(tmp_path):
    spec = make_spec(tmp_path, ("llm",), features=("gpu", "model"))
    ports = {("llm", "chat"): 8081, ("llm", "embed"): 8082}
    devices = botlxc.wanted_devices(spec, "llm", ports)
    assert devices["model"] == {
        "type": "disk", "source": str(tmp_path / "stack" / "llm" / "model" / "model.gguf"),
        "path": "/opt/gbo/data/models/model.gguf", "readonly": "true"}
    assert devices["gpu"] == {"type": "gpu"}
    assert devices["port-8081"]["connect"] == "tcp:127.0.0.1:8081"
    # without --gpu there is no gpu device
    assert "gpu" not in botlxc.wanted_devices(make_spec(tmp_path, ("llm",)), "llm", ports)


def test_gpu_device_argv(tmp_path, calls):
    spec = make_spec(tmp_path, ("llm",), features=("gpu",))
    ports = {("llm", "chat"): 8081, ("llm", "embed"): 8082}
    have = {d: p for d, p in botlxc.wanted_devices(spec, "llm", ports).items() if d != "gpu"}
    calls(["lxc", "config", "device", "add", "acme-llm", "gpu", "gpu"])
    botlxc.ensure_devices(botlxc.Runner(), spec, "llm", {"devices": have}, ports)
    assert calls.made() == calls.expected


def test_imap_is_proxied_to_a_second_loopback_address(tmp_path):
    """Dovecot takes a client on its own address as secure: 127.0.0.2 keeps STARTTLS needed."""
    spec = make_spec(tmp_path, ("email",))
    ports = {("email", "submission"): 587, ("email", "imap"): 143, ("email", "imaps"): 993}
    devices = botlxc.wanted_devices(spec, "email", ports)
    assert devices["port-143"]["connect"] == "tcp:127.0.0.2:143"
    assert devices["port-587"]["connect"] == "tcp:127.0.0.1:587"


def test_mail_domain_defaults_to_the_tenant_and_reaches_env_and_templates(tmp_path):
    spec = make_spec(tmp_path, ("email",))
    assert spec.settings_of("email") == {"mail_domain": "acme.local"}
    ports = {("email", "submission"): 1587, ("email", "imap"): 1143, ("email", "imaps"): 1993}
    lines = botlxc.env_lines(spec, ports, {"email": {"EMAIL_PASSWORD": "p" * 32}})
    assert "EMAIL_USER=gbuser@acme.local" in lines and "EMAIL_SMTP_PORT=1587" in lines
    spec.settings = {"mail_domain": "mail.example.org"}
    install = dict((d, c) for d, _, c in botlxc.render_files(spec, "email"))[
        botlxc.LIB_DIR + "/install.sh"]
    assert "DOMAIN=mail.example.org" in install


@pytest.mark.parametrize("value", ["Example.org", "no-dot", "-a.org", "a..org", "a.org.",
                                   "x" * 64 + ".org", "a b.org"])
def test_bad_mail_domains_are_refused(value):
    with pytest.raises(botlxc.BadInput, match="invalid --mail-domain"):
        botlxc.validate_domain(value, "--mail-domain")


def test_models_are_checked(tmp_path):
    good = tmp_path / "m.gguf"
    good.write_bytes(GGUF)
    assert botlxc.parse_models(["llm=%s" % good]) == {"llm": good}
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"ELF....")
    link = tmp_path / "link.gguf"
    os.symlink(str(good), str(link))
    for value, message in (("llm=%s" % bad, "does not start with b'GGUF'"),
                           ("llm=%s" % link, "not a regular file"),
                           ("llm=%s" % (tmp_path / "missing"), "not a regular file"),
                           ("tables=%s" % good, "COMPONENT=PATH, for llm"),
                           ("llm", "COMPONENT=PATH")):
        with pytest.raises(botlxc.BadInput, match=message.replace("(", r"\(").replace(
                ")", r"\)")):
            botlxc.parse_models([value])


def test_the_model_is_copied_beside_the_mounts_once(tmp_path, calls):
    spec = make_spec(tmp_path, ("llm",))
    source = tmp_path / "m.gguf"
    source.write_bytes(GGUF)
    dest = tmp_path / "stack" / "llm" / "model" / "model.gguf"
    calls(["install", "-D", "-p", "-m", "0444", str(source), str(dest)])
    botlxc.place_model(botlxc.Runner(), spec, "llm", source)
    assert calls.made() == calls.expected
    dest.parent.mkdir(parents=True)
    dest.write_bytes(GGUF)
    st = os.stat(str(source))
    os.utime(str(dest), (st.st_atime, st.st_mtime))
    botlxc.place_model(botlxc.Runner(), spec, "llm", source)  # same size and time: no copy
    assert calls.made() == calls.expected


def test_wheels_are_built_once_in_botlxcs_own_builder(tmp_path, calls):
    host = facts(cache_dir=str(tmp_path / "cache"), run_dir=str(tmp_path / "run"))
    spec = make_spec(tmp_path, ("llm",), host=host)
    spec.image_used = "botlxc/debian-12"
    files = botlxc.render_files(spec, "llm")
    key = botlxc.digest(botlxc._template_source("components/llm/install.sh.j2")[0],
                        "llama-cpp-python")
    cache = tmp_path / "cache" / "wheels" / "llm" / key
    wheel = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    b = "botlxc-build-llm"
    calls(["lxc", "delete", "--force", b], returncode=1)
    calls(["rm", "-rf", str(tmp_path / "cache" / "wheels" / "llm" / key) + ".new"])
    calls(["lxc", "init", "botlxc/debian-12", b])
    calls(["lxc", "start", b])
    calls(["lxc", "exec", b, "--", *botlxc.BOOT_WAIT])
    calls(["lxc", "exec", b, "--", *botlxc.NETWORK_WAIT])
    calls(["lxc", "file", "push", "-", b + botlxc.SECRETS_IN, "--create-dirs", "--mode",
           "0600"])
    for dest, mode, _ in files:
        calls(["lxc", "file", "push", "-", b + dest, "--create-dirs", "--mode", mode])
    calls(["lxc", "exec", b, "--env", "BOTLXC_BUILD_ONLY=1", "--", "nice", "-n", "19",
           *botlxc.INSTALL])
    calls(["lxc", "exec", b, "--", "find", "/var/cache/botlxc/wheels", "-maxdepth", "1",
           "-type", "f", "-name", "*.whl", "-printf", "%f\n"], stdout=wheel + "\n../evil\n")
    calls(["install", "-d", "-m", "0700", str(cache.parent.parent), str(cache.parent),
           str(cache) + ".new"])
    calls(["lxc", "exec", b, "--", "cat", "/var/cache/botlxc/wheels/" + wheel])
    calls(["mv", "--no-target-directory", str(cache) + ".new", str(cache)])
    calls(["rm", "-rf", str(cache) + ".new"])
    calls(["lxc", "delete", "--force", b])
    (tmp_path / "run").mkdir(mode=0o700)
    (cache.parent.parent).mkdir(parents=True, mode=0o700)
    (cache.parent).mkdir(mode=0o700)
    (tmp_path / "cache" / "wheels" / "llm" / (key + ".new")).mkdir(mode=0o700)
    assert botlxc.wheel_cache(botlxc.Runner(), spec, "llm") == cache
    assert calls.made() == calls.expected  # "../evil" was not a wheel name: never read
    # another tenant's install script differs only in its name: the same cache
    other = make_spec(tmp_path, ("llm",), host=host, tenant="other")
    other.image_used = spec.image_used
    # a second install finds it: nothing runs
    cache.mkdir(exist_ok=True)
    (cache / wheel).write_bytes(b"PK")
    assert botlxc.wheel_cache(botlxc.Runner(), spec, "llm") == cache
    assert botlxc.wheel_cache(botlxc.Runner(), other, "llm") == cache
    assert calls.made() == calls.expected


def test_local_mode_renders_the_same_templates_at_host_paths(tmp_path):
    spec = make_spec(tmp_path, ("tables",))
    place = botlxc.local_place(spec, "tables")
    base = str(tmp_path / "stack" / "tables" / "local")
    files = {d: c for d, _, c in botlxc.render_files(spec, "tables", place, {"pg": 5433})}
    assert set(files) >= {base + "/lib/install.sh", base + "/lib/health.sh",
                          base + "/conf/postgresql.conf", base + "/etc/botlxc-acme-tables.service",
                          "/etc/logrotate.d/botlxc-acme-tables"}
    conf = files[base + "/conf/postgresql.conf"]
    assert "port = 5433" in conf and "data_directory = '%s/data/pgdata'" % base in conf
    assert "/opt/gbo" not in "".join(files.values())
    unit = files[base + "/etc/botlxc-acme-tables.service"]
    assert "config_file=%s/conf/postgresql.conf" % base in unit
    # where systemd runs, the unit goes where systemd reads it
    spec.host = facts(systemd=True)
    place = botlxc.local_place(spec, "tables")
    assert place.dest("/etc/systemd/system/tables.service", "tables") == \
        "/etc/systemd/system/botlxc-acme-tables.service"


def test_components_without_a_local_mode_say_so(tmp_path):
    assert [c for c, comp in botlxc.COMPONENTS.items() if comp.local] == [
        "tables", "drive", "cache"]
    spec = make_spec(tmp_path, ("email",))
    with pytest.raises(botlxc.BadInput, match="has no place outside its container"):
        botlxc.local_place(spec, "email").dest("/etc/postfix/main.cf", "email")


def test_a_stack_path_local_mode_cannot_use_is_refused(tmp_path):
    spec = make_spec(tmp_path, ("tables",), stack=tmp_path / "my stack")
    with pytest.raises(botlxc.BadInput, match="letters, digits and ._/- only"):
        botlxc.local_place(spec, "tables")


def test_optional_components_are_not_in_a_plain_up():
    assert botlxc.DEFAULT_COMPONENTS == ("tables", "drive", "cache")
    assert all(botlxc.COMPONENTS[c].optional for c in ("llm", "email"))
