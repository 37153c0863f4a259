"""Live: the optional components (llm, email) on the real LXD, checked with real clients.

llm: tenant A goes up with `-c llm --model llm=<a tiny random GGUF>` (tiny_gguf.py) and is
asked through its forwarded ports with urllib (/v1/models, chat and text completions,
embeddings); tenant B goes up the same way after it and must not compile (the wheel botlxc
built once in its builder container is kept under /var/cache/botlxc/wheels/llm/ and pushed
in). Both install times are printed (`pytest -s`); the first one includes the one-time
build when the host's cache was empty (about 10 minutes on 2 cores). The cache is never
deleted here. A third tenant without --model is refused (exit 2) and gets no container.

email: one tenant with --mail-domain; smtplib (submission, STARTTLS + AUTH) sends to
EMAIL_USER and imaplib (STARTTLS) reads it back; wrong passwords, a plaintext IMAP login
and unauthenticated relaying are refused; then `backup` counts the message and `status`
says healthy.

Stacks, the model and bundles live in a root-owned dir of this module's own under /srv;
every tenant is destroyed with its data at the end, even on failure. Runs on the real LXD
only (see test_live.py for the skip/fail rule).
"""
import imaplib
import json
import secrets
import smtplib
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlparse

import pytest

from test_live import ROOT, botlxc, srv_dir, cleanup, instances, lxc, real_lxd  # noqa: F401
from test_live_services import read_env

pytestmark = pytest.mark.live
pytest.importorskip("gguf")
from tiny_gguf import N_EMBD, write_tiny_gguf  # noqa: E402

WHEELS = Path("/var/cache/botlxc/wheels/llm")
BUILDER = "botlxc-build-llm"
INSTALL_LOG = "/var/log/botlxc/install.log"
TIMES = {}  # tenant -> (seconds of its `up`, botlxc's own "ready (...)" line)


# ----------------------------------------------------------------------------- helpers


def run(*args):
    """botlxc as cron or CI runs it (stdin not a terminal), never checked."""
    return subprocess.run([sys.executable, str(ROOT / "botlxc.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)


def in_container(name, *argv, check=True):
    return lxc("exec", name, "--", *argv, check=check)


def cached_wheels():
    return sorted(str(p.relative_to(WHEELS)) for p in WHEELS.glob("*/*.whl")) \
        if WHEELS.is_dir() else []


def timed_up(name, *args):
    started = time.monotonic()
    proc = botlxc("up", "--tenant", name, *args)
    took = time.monotonic() - started
    ready = [line.strip() for line in proc.stderr.splitlines() if " ready " in line]
    TIMES[name] = (took, ready, "wheels once" in proc.stderr)
    print("\n[timing] botlxc up -t %s %s: %.1f s wall; %s"
          % (name, " ".join(args), took, "; ".join(ready)))
    return proc


def http(url, body=None, timeout=120):
    """GET (or POST json) through the forwarded port; the decoded JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={
        "Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        assert answer.status == 200, answer.status
        return json.loads(answer.read().decode())


def no_verify():
    """The mail server's certificate is self-signed: clients do not verify it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def smtp(env):
    client = smtplib.SMTP(env["EMAIL_HOST"], int(env["EMAIL_SMTP_PORT"]), timeout=30)
    client.ehlo("client.example.net")
    return client


def imap(env):
    return imaplib.IMAP4(env["EMAIL_HOST"], int(env["EMAIL_IMAP_PORT"]), timeout=30)


def health(tenant):
    rows = json.loads(botlxc("status", "--tenant", tenant, "--json").stdout)
    return {r["component"]: r["health"] for r in rows}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def area():
    """A root-owned dir of this module's own under /srv (stacks, the model, bundles)."""
    with srv_dir("cpt") as path:
        yield path


@pytest.fixture(scope="module")
def names():
    """cpt + 4 hex + a letter: a (llm), b (llm after a), n (no model), e (email)."""
    base = "cpt" + secrets.token_hex(2)
    return {role: base + role for role in "abne"}


@pytest.fixture(scope="module")
def model(area):
    path = area / "model" / "tiny.gguf"
    path.parent.mkdir(mode=0o755)
    write_tiny_gguf(path)
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def llm_a(area, names, model):
    """Tenant A with llm; the host's wheel cache as A left it (A built it if it was empty)."""
    name, stack = names["a"], area / "stack-a"
    try:
        timed_up(name, "--stack-dir", str(stack), "-c", "llm", "--model", "llm=%s" % model)
        yield name, stack, cached_wheels()
    finally:
        cleanup(name)


@pytest.fixture(scope="module")
def llm_b(llm_a, area, names, model):
    """Tenant B with llm after A. Its plan (--dry-run) is read first: a plan that builds
    the wheel again would take the whole build time (~10 minutes) to then fail, so it fails
    there instead of bringing B up."""
    name, stack = names["b"], area / "stack-b"
    args = ("--stack-dir", str(stack), "-c", "llm", "--model", "llm=%s" % model)
    try:
        plan = run("up", "--tenant", name, *args, "--dry-run")
        assert plan.returncode == 0, (plan.stdout[-2000:], plan.stderr)
        assert not instances(name) and not stack.exists()
        assert BUILDER not in plan.stdout, "a second tenant's llm install would build again"
        proc = timed_up(name, *args)
        yield name, stack, proc
    finally:
        cleanup(name)


@pytest.fixture(scope="module")
def mail(area, names):
    name, stack = names["e"], area / "stack-e"
    domain = name + ".example.org"
    try:
        timed_up(name, "--stack-dir", str(stack), "-c", "email", "--mail-domain", domain)
        yield name, stack, domain
    finally:
        cleanup(name)


# ----------------------------------------------------------------------------- 1. llm


def test_01_llm_answers_the_openai_api_through_its_ports(llm_a, model):
    name, stack, _ = llm_a
    env = read_env(stack)
    for key in ("LLM_URL", "LLM_EMBEDDINGS_URL"):
        url = urlparse(env[key])
        assert (url.scheme, url.hostname, url.path) == ("http", "127.0.0.1", "/v1"), env[key]
    chat, embed = env["LLM_URL"], env["LLM_EMBEDDINGS_URL"]
    assert urlparse(chat).port != urlparse(embed).port

    # the model: copied read-only beside the dirs, read-only inside too
    placed = stack / "llm" / "model" / "model.gguf"
    assert placed.read_bytes() == model.read_bytes()
    assert stat.S_IMODE(placed.stat().st_mode) == 0o444 and placed.stat().st_uid == 0
    inside = "/opt/gbo/data/models/model.gguf"
    assert in_container(name + "-llm", "head", "-c", "4", inside).stdout == "GGUF"
    denied = in_container(name + "-llm", "sh", "-c", "echo x >> " + inside, check=False)
    assert denied.returncode != 0, denied.stdout

    # the wheel was built in botlxc's builder, never in the tenant's container
    assert "building" not in in_container(name + "-llm", "cat", INSTALL_LOG).stdout
    assert in_container(name + "-llm", "dpkg", "-s", "build-essential",
                        check=False).returncode != 0

    for base in (chat, embed):
        listed = http(base + "/models")
        assert listed["data"] and listed["data"][0]["id"], listed

    answer = http(chat + "/chat/completions", {
        "model": "model", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "hello"}]})
    choice = answer["choices"][0]
    assert isinstance(choice["message"]["content"], str), answer
    assert answer["usage"]["completion_tokens"] >= 1, answer

    answer = http(chat + "/completions", {"model": "model", "prompt": "the answer is",
                                          "max_tokens": 4, "temperature": 0})
    assert isinstance(answer["choices"][0]["text"], str), answer
    assert answer["usage"]["completion_tokens"] >= 1, answer

    answer = http(embed + "/embeddings", {"model": "model", "input": "hello world"})
    assert answer["object"] == "list" and len(answer["data"]) == 1, answer
    vector = answer["data"][0]["embedding"]
    assert len(vector) == N_EMBD, len(vector)
    assert all(isinstance(x, float) for x in vector), vector[:4]


# ----------------------------------------------------------------------------- 2. wheel cache


def test_02_second_llm_tenant_reuses_the_hosts_wheel(llm_a, llm_b):
    after_a = llm_a[2]
    assert any(w.split("/")[-1].startswith("llama_cpp_python-") for w in after_a), after_a
    # B built nothing: no builder run, no new entry in the host's cache
    assert "wheels once" not in llm_b[2].stderr, llm_b[2].stderr
    assert cached_wheels() == after_a, (after_a, cached_wheels())
    assert BUILDER not in [i["name"] for i in json.loads(lxc("list", "--format",
                                                             "json").stdout)]
    for name, _, _ in (llm_a, llm_b):
        log = in_container(name + "-llm", "cat", INSTALL_LOG).stdout
        assert "building" not in log, log[-2000:]
        proc = in_container(name + "-llm", "dpkg", "-s", "build-essential", check=False)
        assert proc.returncode != 0, proc.stdout[:500]
        found = in_container(name + "-llm", "sh", "-c",
                             "ls /var/cache/botlxc/wheels/llama_cpp_python-*.whl").stdout
        assert found.strip(), found
    name, stack, _ = llm_b
    assert health(name) == {"llm": "healthy"}
    answer = http(read_env(stack)["LLM_EMBEDDINGS_URL"] + "/embeddings",
                  {"input": ["one", "two"]})
    assert [len(d["embedding"]) for d in answer["data"]] == [N_EMBD, N_EMBD], answer
    (a_took, a_ready, a_built), (b_took, b_ready, _) = TIMES[llm_a[0]], TIMES[llm_b[0]]
    print("\n[timing] llm install: first tenant %.1f s (%s; %s), second tenant %.1f s (%s; "
          "from the cached wheel)" % (a_took, "; ".join(a_ready), "built the wheel first"
                                      if a_built else "the wheel was cached already",
                                      b_took, "; ".join(b_ready)))


# ----------------------------------------------------------------------------- 3. no model


def test_03_llm_without_a_model_is_refused_and_makes_no_container(area, names):
    name, stack = names["n"], area / "stack-n"
    try:
        proc = run("up", "--tenant", name, "--stack-dir", str(stack), "-c", "llm")
        assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "--model llm=PATH" in lines[0], lines[0]
        assert proc.stdout == "", proc.stdout
        assert instances(name) == {}
        assert not stack.exists()
    finally:
        cleanup(name)


# ----------------------------------------------------------------------------- 4. email


def test_04_email_env(mail):
    _, stack, domain = mail
    env = read_env(stack)
    assert env["EMAIL_HOST"] == "127.0.0.1", env
    assert env["EMAIL_USER"] == "gbuser@" + domain, env
    assert len(env["EMAIL_PASSWORD"]) >= 16
    ports = [int(env[k]) for k in ("EMAIL_SMTP_PORT", "EMAIL_IMAP_PORT", "EMAIL_IMAPS_PORT")]
    assert len(set(ports)) == 3, ports
    assert stat.S_IMODE((stack / ".env").stat().st_mode) == 0o600


def test_05_email_send_over_submission_and_read_over_imap(mail):
    _, stack, _ = mail
    env = read_env(stack)
    user, password = env["EMAIL_USER"], env["EMAIL_PASSWORD"]
    subject = "botlxc live " + secrets.token_hex(4)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = user, user, subject
    message.set_content("sent through the forwarded submission port\n")

    with smtp(env) as client:
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), client.esmtp_features  # only after STARTTLS
        client.starttls(context=no_verify())
        client.ehlo("client.example.net")
        assert client.has_extn("auth"), client.esmtp_features
        client.login(user, password)
        assert client.send_message(message) == {}

    conn = imap(env)
    try:
        conn.starttls(ssl_context=no_verify())
        conn.login(user, password)
        deadline = time.monotonic() + 60
        while True:
            conn.select("INBOX")
            typ, found = conn.search(None, "SUBJECT", '"%s"' % subject)
            assert typ == "OK", found
            if found[0].split():
                break
            assert time.monotonic() < deadline, "the message did not arrive in INBOX"
            time.sleep(1)
        typ, fetched = conn.fetch(found[0].split()[-1], "(RFC822)")
        assert typ == "OK"
        raw = fetched[0][1].decode(errors="replace")
        assert subject in raw and "forwarded submission port" in raw, raw
    finally:
        conn.logout()

    with imaplib.IMAP4_SSL(env["EMAIL_HOST"], int(env["EMAIL_IMAPS_PORT"]),
                           ssl_context=no_verify(), timeout=30) as conn:
        conn.login(user, password)
        typ, found = conn.select("INBOX")
        assert typ == "OK" and int(found[0]) >= 1, found


def test_06_email_refuses_wrong_passwords_plaintext_login_and_relaying(mail):
    _, stack, _ = mail
    env = read_env(stack)
    user, password = env["EMAIL_USER"], env["EMAIL_PASSWORD"]

    with smtp(env) as client:
        client.starttls(context=no_verify())
        client.ehlo("client.example.net")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(user, password + "x")

    conn = imap(env)
    try:
        conn.starttls(ssl_context=no_verify())
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(user, password + "x")
    finally:
        conn.shutdown()

    # plaintext: no STARTTLS, the right password; the server must not take it
    conn = imap(env)
    try:
        assert "LOGINDISABLED" in conn.capabilities, conn.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(user, password)
        assert conn.state == "NONAUTH"
    finally:
        conn.shutdown()

    # relaying without AUTH through submission: with TLS, and without it
    outside = "someone@example.com"
    with smtp(env) as client:
        client.starttls(context=no_verify())
        client.ehlo("client.example.net")
        with pytest.raises((smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused)):
            client.sendmail("spammer@example.net", [outside], "Subject: relay\r\n\r\nno\r\n")
    with smtp(env) as client:
        with pytest.raises((smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused)):
            client.sendmail("spammer@example.net", [outside], "Subject: relay\r\n\r\nno\r\n")


def test_07_email_backup_counts_the_message_and_status_is_healthy(mail, area):
    name, _, _ = mail
    bundles = area / "bundles"
    proc = botlxc("backup", "--tenant", name, "--to", str(bundles))
    bundle = Path(proc.stdout.strip().splitlines()[-1])
    assert bundle.parent == bundles and bundle.is_dir(), proc.stdout
    assert (bundle / "email.tar").is_file() and (bundle / "email.secrets").is_file()
    manifest = json.loads((bundle / "manifest.json").read_text())
    counts = manifest["components"]["email"]["counts"]
    assert counts["messages"] >= 1, counts
    listed = subprocess.run(["tar", "-tf", str(bundle / "email.tar")], capture_output=True,
                            text=True)
    assert listed.returncode == 0 and listed.stdout.strip(), listed.stderr
    # backup.sh stops the mail service for the copy, and returns once it serves again
    assert health(name) == {"email": "healthy"}
    text = botlxc("status", "--tenant", name).stdout
    assert any(name + "-email" in line and "healthy" in line and "unhealthy" not in line
               for line in text.splitlines()), text


def test_08_email_serves_as_soon_as_backup_returns(mail, area):
    name, stack, _ = mail
    botlxc("backup", "--tenant", name, "--to", str(area / "bundles"))
    env = read_env(stack)
    with smtp(env) as client:  # refused (connection closed) while Postfix starts
        assert client.has_extn("starttls")
    assert health(name) == {"email": "healthy"}
