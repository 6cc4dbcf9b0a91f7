"""The downloader against a real HTTP server on 127.0.0.1 (no network)."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from scratchlm.data.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    truncate_next = 0  # how many requests to cut off half way
    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/data.bin":
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        Handler.ranges.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.truncate_next:
            Handler.truncate_next -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.truncate_next, Handler.ranges = 0, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_and_cache(server, tmp_path):
    path = download(f"{server}/data.bin", sha256=DIGEST, cache=tmp_path, mirror="", progress=False)
    assert path == tmp_path / "data.bin" and path.read_bytes() == PAYLOAD
    # a second call is served from the cache: no new request
    n = len(Handler.ranges)
    assert download(f"{server}/data.bin", sha256=DIGEST, cache=tmp_path, mirror="") == path
    assert len(Handler.ranges) == n


def test_wrong_checksum_leaves_no_file(server, tmp_path):
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{server}/data.bin", sha256="0" * 64, cache=tmp_path, mirror="", progress=False)
    assert not (tmp_path / "data.bin").exists()
    assert not (tmp_path / "data.bin.part").exists()


def test_404_names_url_cache_and_variable(server, tmp_path):
    with pytest.raises(DownloadError) as e:
        download(f"{server}/missing.txt", cache=tmp_path, mirror="", progress=False)
    msg = str(e.value)
    assert "404" in msg and f"{server}/missing.txt" in msg
    assert str(tmp_path / "missing.txt") in msg and "SCRATCHLM_MIRROR" in msg


def test_truncated_transfer_then_resume(server, tmp_path):
    Handler.truncate_next = 1
    with pytest.raises(DownloadError, match="truncated"):
        download(f"{server}/data.bin", sha256=DIGEST, cache=tmp_path, mirror="", progress=False)
    assert not (tmp_path / "data.bin").exists()  # never a half file under the final name
    part = tmp_path / "data.bin.part"
    assert 0 < part.stat().st_size < len(PAYLOAD)
    have = part.stat().st_size
    path = download(f"{server}/data.bin", sha256=DIGEST, cache=tmp_path, mirror="", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert Handler.ranges[-1] == f"bytes={have}-"  # resumed, not restarted


def test_offline_error_is_clear(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    url = f"http://127.0.0.1:{port}/the-verdict.txt"
    with pytest.raises(DownloadError) as e:
        download(url, cache=tmp_path, mirror="", progress=False, timeout=5)
    msg = str(e.value)
    assert url in msg and str(tmp_path / "the-verdict.txt") in msg and "SCRATCHLM_MIRROR" in msg


def test_mirror_folder_and_url(server, tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "data.bin").write_bytes(PAYLOAD)
    got = download("http://127.0.0.1:9/nowhere/data.bin", sha256=DIGEST, cache=tmp_path / "c",
                   mirror=str(folder), progress=False)
    assert got.read_bytes() == PAYLOAD
    # a URL base as the mirror: the file is fetched from there by name
    got = download("http://127.0.0.1:9/elsewhere/data.bin", sha256=DIGEST, cache=tmp_path / "d",
                   mirror=server, progress=False)
    assert got == tmp_path / "d" / "data.bin" and got.read_bytes() == PAYLOAD


def test_bad_mirror_file_is_rejected(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"not it")
    with pytest.raises(DownloadError, match="checksum"):
        download("http://127.0.0.1:9/data.bin", sha256=DIGEST, cache=tmp_path / "c",
                 mirror=str(folder), progress=False)
