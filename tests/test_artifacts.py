"""fetch_artifact: a user-supplied binary (MinIO) from a path or a URL, checked by sha256."""
import hashlib
import http.server
import threading

import pytest

import botlxc
from conftest import facts

PAYLOAD = b"\x7fELF" + b"minio server stand-in " * 64
GOOD = hashlib.sha256(PAYLOAD).hexdigest()
BAD = "0" * 64


def fetch(tmp_path, source, sha, dry_run=False):
    """fetch_artifact with the host's cache dir under tmp_path; returns (result, runner)."""
    runner = botlxc.Runner(dry_run)
    host = facts(cache_dir=str(tmp_path / "cache"))
    return botlxc.fetch_artifact(runner, host, source, sha), runner


def test_local_file_with_the_right_sum(tmp_path):
    path = tmp_path / "minio"
    path.write_bytes(PAYLOAD)
    assert fetch(tmp_path, str(path), GOOD)[0] == (path, GOOD)
    assert fetch(tmp_path, str(path), None)[0] == (path, GOOD)  # a local file may skip it
    # --sha256 in upper case is the same sum
    assert botlxc.parse_artifacts(["minio=%s" % path], ["minio=" + GOOD.upper()],
                                  {"drive": "minio"}, ("drive",)) == {"drive": (str(path), GOOD)}


def test_local_file_with_a_wrong_sum(tmp_path):
    path = tmp_path / "minio"
    path.write_bytes(PAYLOAD)
    with pytest.raises(botlxc.BotlxcError) as failed:
        fetch(tmp_path, str(path), BAD)
    assert str(failed.value) == ("artifact %s: sha256 mismatch: expected %s, got %s; refusing "
                                 "to install it" % (path, BAD, GOOD))
    assert failed.value.exit_code == 1


def test_missing_local_file_is_bad_input(tmp_path):
    with pytest.raises(botlxc.BadInput, match="does not exist"):
        fetch(tmp_path, str(tmp_path / "nope"), GOOD)


@pytest.fixture
def server(monkeypatch):
    """A real HTTP server on 127.0.0.1 serving PAYLOAD; counts the downloads."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path != "/dl/minio":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % httpd.server_address[1], hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_url_with_the_right_sum_is_downloaded_once(server, tmp_path):
    base, hits = server
    (path, actual), runner = fetch(tmp_path, base + "/dl/minio", GOOD)
    assert actual == GOOD and path.read_bytes() == PAYLOAD
    assert path == tmp_path / "cache/artifacts" / (GOOD[:16] + "-minio")
    assert oct((tmp_path / "cache/artifacts").stat().st_mode & 0o777) == "0o700"
    assert [a.argv[:2] for a in runner.actions] == [["sh", "-c"]]
    assert fetch(tmp_path, base + "/dl/minio", GOOD)[0] == (path, GOOD)
    assert hits == ["/dl/minio"]  # the second call used the checked copy
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no .part left


def test_a_dry_run_downloads_nothing_and_plans_the_download(server, tmp_path):
    base, hits = server
    (path, actual), runner = fetch(tmp_path, base + "/dl/minio", GOOD, dry_run=True)
    assert hits == [] and not (tmp_path / "cache").exists()
    assert actual == GOOD
    script = runner.script()
    assert "curl -fsSL" in script and base + "/dl/minio" in script and GOOD in script


def test_url_with_a_wrong_sum_names_the_mismatch(server, tmp_path):
    base, hits = server
    with pytest.raises(botlxc.BotlxcError) as failed:
        fetch(tmp_path, base + "/dl/minio", BAD)
    assert str(failed.value) == ("artifact %s/dl/minio: sha256 mismatch: expected %s, got %s; "
                                 "refusing to install it" % (base, BAD, GOOD))
    assert hits == ["/dl/minio"]
    assert list((tmp_path / "cache/artifacts").iterdir()) == []  # nothing kept


def test_url_that_fails_to_download_is_a_clear_error(server, tmp_path):
    base, hits = server
    with pytest.raises(botlxc.BotlxcError, match="artifact: download of .*/dl/nothing failed: "
                                                 "HTTP Error 404"):
        fetch(tmp_path, base + "/dl/nothing", GOOD)
