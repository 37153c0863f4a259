"""fetch_artifact: a user-supplied binary (MinIO) from a path or a URL, checked by sha256."""
import hashlib
import http.server
import threading

import pytest

import botlxc

PAYLOAD = b"\x7fELF" + b"minio server stand-in " * 64
GOOD = hashlib.sha256(PAYLOAD).hexdigest()
BAD = "0" * 64
CACHE = botlxc.Path("/var/cache/botlxc/artifacts")


def test_local_file_with_the_right_sum(tmp_path):
    path = tmp_path / "minio"
    path.write_bytes(PAYLOAD)
    assert botlxc.fetch_artifact(str(path), GOOD) == (path, GOOD)
    assert botlxc.fetch_artifact(str(path), GOOD.upper()) == (path, GOOD)
    assert botlxc.fetch_artifact(str(path), None) == (path, GOOD)  # a local file may skip it


def test_local_file_with_a_wrong_sum(tmp_path):
    path = tmp_path / "minio"
    path.write_bytes(PAYLOAD)
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.fetch_artifact(str(path), BAD)
    assert str(failed.value) == ("artifact %s: sha256 mismatch: expected %s, got %s; refusing "
                                 "to install it" % (path, BAD, GOOD))
    assert failed.value.exit_code == 1


def test_missing_local_file_is_bad_input(tmp_path):
    with pytest.raises(botlxc.BadInput, match="does not exist"):
        botlxc.fetch_artifact(str(tmp_path / "nope"), GOOD)


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
    before = set(CACHE.glob("*")) if CACHE.is_dir() else set()
    try:
        yield "http://127.0.0.1:%d" % httpd.server_address[1], hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        # the download cache is a fixed host path: leave it as it was
        for path in (set(CACHE.glob("*")) if CACHE.is_dir() else set()) - before:
            path.unlink()


def test_url_with_the_right_sum_is_downloaded_once(server):
    base, hits = server
    path, actual = botlxc.fetch_artifact(base + "/dl/minio", GOOD)
    assert actual == GOOD and path.read_bytes() == PAYLOAD
    assert botlxc.fetch_artifact(base + "/dl/minio", GOOD) == (path, GOOD)
    assert hits == ["/dl/minio"]  # the second call used the checked copy


def test_url_with_a_wrong_sum_names_the_mismatch(server):
    base, hits = server
    with pytest.raises(botlxc.BotlxcError) as failed:
        botlxc.fetch_artifact(base + "/dl/minio", BAD)
    assert str(failed.value) == ("artifact %s/dl/minio: sha256 mismatch: expected %s, got %s; "
                                 "refusing to install it" % (base, BAD, GOOD))
    assert hits == ["/dl/minio"]


def test_url_that_fails_to_download_is_a_clear_error(server):
    base, hits = server
    with pytest.raises(botlxc.BotlxcError, match="artifact: download of .*/dl/nothing failed: "
                                                 "HTTP Error 404"):
        botlxc.fetch_artifact(base + "/dl/nothing", GOOD)
