"""The downloader against a real HTTP server on 127.0.0.1 (no network)."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from scratchlm.downloads.download import DownloadError, download, safe_path

PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    truncate_next = 0  # how many requests to cut off half way
    ranges: list = []  # the Range header of each request to /data.bin
    validators: list = []  # ... and its If-Range header
    auth: list = []  # (path, Authorization header) of each request
    etag: str | None = '"v1"'  # the validator sent with /data.bin (None: none)
    payload = PAYLOAD
    range_shift = 0  # a hostile server: answer a range request from this many bytes later
    linked: dict = {}  # headers the /hub/ redirect carries (X-Linked-Etag, X-Linked-Size)
    cdn_host = "127.0.0.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.auth.append((self.path, self.headers.get("Authorization")))
        if self.path == "/data.bin":
            return self._data()
        if self.path == "/hub/model.safetensors":  # the Hub's LFS redirect to its storage
            self.send_response(302)
            self.send_header("Location", f"http://{Handler.cdn_host}:{self.server.server_port}"
                                         "/cdn/blob")
            for k, v in Handler.linked.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/cdn/blob":
            self.send_response(200)
            return self._send(Handler.payload)
        if self.path == "/hub/config.json":  # a small (non-LFS) Hub file: ETag = git blob sha1
            body = b'{"model_type": "gpt2"}'
            self.send_response(200)
            self.send_header("ETag", f'"{Handler.linked.get("git", _git_sha1(body))}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            return self._send(body)
        if self.path == "/nolength.bin":  # HTTP/1.0 style: the body ends when the socket closes
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.close_connection = True
            return
        self.send_error(404, "Not Found")

    def _data(self):
        start = 0
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        Handler.ranges.append(rng)
        Handler.validators.append(if_range)
        if rng and (if_range is None or if_range == Handler.etag):
            start = int(rng.split("=")[1].split("-")[0])
            shown = start + Handler.range_shift
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {shown}-{len(Handler.payload) - 1}/"
                                              f"{len(Handler.payload)}")
        else:
            self.send_response(200)
        if Handler.etag:
            self.send_header("ETag", Handler.etag)
        self._send(Handler.payload[start:])

    def _send(self, body):
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.truncate_next:
            Handler.truncate_next -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


def _git_sha1(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


@pytest.fixture
def server():
    Handler.truncate_next, Handler.ranges, Handler.validators, Handler.auth = 0, [], [], []
    Handler.etag, Handler.payload, Handler.range_shift, Handler.linked = '"v1"', PAYLOAD, 0, {}
    Handler.cdn_host = "127.0.0.1"
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
    assert Handler.validators[-1] == '"v1"'  # ... and only if the file is still the same
    assert not (tmp_path / "data.bin.part.json").exists()


def test_a_changed_file_restarts_instead_of_splicing(server, tmp_path):
    Handler.truncate_next = 1
    with pytest.raises(DownloadError, match="truncated"):
        download(f"{server}/data.bin", cache=tmp_path, mirror="", progress=False)
    Handler.etag, Handler.payload = '"v2"', PAYLOAD[::-1]  # the file changed on the server
    path = download(f"{server}/data.bin", cache=tmp_path, mirror="", progress=False)
    assert path.read_bytes() == PAYLOAD[::-1]  # not old head + new tail


def test_a_part_without_a_validator_is_started_over(server, tmp_path):
    Handler.etag, Handler.truncate_next = None, 1
    with pytest.raises(DownloadError, match="truncated"):
        download(f"{server}/data.bin", cache=tmp_path, mirror="", progress=False)
    assert (tmp_path / "data.bin.part").exists()
    path = download(f"{server}/data.bin", cache=tmp_path, mirror="", progress=False)
    assert path.read_bytes() == PAYLOAD and Handler.ranges[-1] is None


def test_a_206_for_the_wrong_range_is_refused(server, tmp_path):
    Handler.truncate_next, Handler.range_shift = 1, 100
    with pytest.raises(DownloadError, match="truncated"):
        download(f"{server}/data.bin", cache=tmp_path, mirror="", progress=False)
    with pytest.raises(DownloadError, match="refusing the reply.*starting at"):
        download(f"{server}/data.bin", cache=tmp_path, mirror="", progress=False)
    assert not (tmp_path / "data.bin").exists() and not (tmp_path / "data.bin.part").exists()
    Handler.range_shift = 0
    assert download(f"{server}/data.bin", cache=tmp_path, mirror="",
                    progress=False).read_bytes() == PAYLOAD


def test_a_body_without_length_never_lands_unverified(server, tmp_path):
    with pytest.raises(DownloadError, match="no Content-Length"):
        download(f"{server}/nolength.bin", cache=tmp_path, mirror="", progress=False)
    assert not (tmp_path / "nolength.bin").exists()
    # with a digest to check it, the same reply is judged by that (here: it was cut short)
    with pytest.raises(DownloadError, match="checksum"):
        download(f"{server}/nolength.bin", sha256=DIGEST, cache=tmp_path, mirror="",
                 progress=False)
    assert not (tmp_path / "nolength.bin").exists()


def test_hub_lfs_files_are_checked_against_the_linked_etag_and_size(server, tmp_path):
    Handler.linked = {"X-Linked-Etag": f'"{DIGEST}"', "X-Linked-Size": str(len(PAYLOAD))}
    path = download(f"{server}/hub/model.safetensors", cache=tmp_path / "a", mirror="",
                    progress=False)
    assert path.read_bytes() == PAYLOAD
    Handler.payload = PAYLOAD[:-1] + b"X"  # the storage serves other bytes than the hub vouched
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{server}/hub/model.safetensors", cache=tmp_path / "b", mirror="",
                 progress=False)
    Handler.payload = PAYLOAD[:-1]
    with pytest.raises(DownloadError, match="said the file is"):
        download(f"{server}/hub/model.safetensors", cache=tmp_path / "c", mirror="",
                 progress=False)
    assert not any((tmp_path / d / "model.safetensors").exists() for d in "bc")


def test_small_hub_files_are_checked_against_their_git_sha1(server, tmp_path):
    assert download(f"{server}/hub/config.json", cache=tmp_path / "a", mirror="",
                    progress=False).read_bytes() == b'{"model_type": "gpt2"}'
    Handler.linked = {"git": "1" * 40}
    with pytest.raises(DownloadError, match="git sha1"):
        download(f"{server}/hub/config.json", cache=tmp_path / "b", mirror="", progress=False)
    assert not (tmp_path / "b" / "config.json").exists()


def test_the_token_does_not_follow_a_redirect_to_another_host(server, tmp_path):
    Handler.cdn_host = "localhost"
    download(f"{server}/hub/model.safetensors", cache=tmp_path, mirror="", progress=False,
             headers={"Authorization": "Bearer secret"})
    assert Handler.auth == [("/hub/model.safetensors", "Bearer secret"), ("/cdn/blob", None)]


@pytest.mark.parametrize("name", ["../evil.bin", "a/../../evil.bin", "/etc/evil.bin",
                                  "a\\..\\evil.bin", "a//b", "./x", "C:evil", "a\0b"])
def test_names_that_leave_the_cache_are_refused(tmp_path, name):
    with pytest.raises(DownloadError, match="refusing file name"):
        download("http://127.0.0.1:9/x", name, cache=tmp_path / "cache", mirror="",
                 progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_link_out_of_the_cache_is_refused(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "hf").symlink_to(tmp_path)
    with pytest.raises(DownloadError, match="outside"):
        safe_path(tmp_path / "cache", "hf/evil.bin")
    assert safe_path(tmp_path / "cache", "hf2/ok.bin") == tmp_path / "cache" / "hf2" / "ok.bin"


def test_a_hostile_index_cannot_write_outside_the_cache(tmp_path, monkeypatch):
    """A hub whose model.safetensors.index.json names ``../../x.safetensors`` as a shard."""
    import json

    from conftest import static_server
    from scratchlm.checkpoints.hub import fetch_hf_repo
    from scratchlm.checkpoints.files import CheckpointError

    repo = tmp_path / "hub" / "o" / "m" / "resolve" / "main"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text("{}")
    (repo / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "../../../../escaped.safetensors"}}))
    (tmp_path / "escaped.safetensors").write_bytes(b"")  # what the hub would serve there
    with static_server(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub)
        monkeypatch.setenv("SCRATCHLM_MIRROR", "")
        monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
        with pytest.raises(CheckpointError, match="shard name"):
            fetch_hf_repo("o/m", progress=False)
        with pytest.raises(ValueError, match="repository name"):
            fetch_hf_repo("../../o", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "escaped.safetensors", "hub"]
    assert sorted(p.name for p in (tmp_path / "cache" / "hf" / "o" / "m").iterdir()) == [
        "config.json", "model.safetensors.index.json"]


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


def test_a_missing_file_names_the_mirror_folder_tried(tmp_path):
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DownloadError) as e:
        download("http://127.0.0.1:9/x/data.bin", "sms/data.bin", cache=tmp_path / "c",
                 mirror=str(tmp_path / "mirror"), progress=False, timeout=5)
    assert f"{tmp_path / 'mirror' / 'sms' / 'data.bin'} does not exist" in str(e.value)


def test_a_missing_archive_says_its_unpacked_member_would_do(tmp_path, monkeypatch):
    """The SMS data set's mirror may hold the bare SMSSpamCollection instead of the UCI zip."""
    from scratchlm.downloads import sources

    (tmp_path / "mirror").mkdir()
    monkeypatch.setenv("SCRATCHLM_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sources.SOURCES, "sms-spam", sources.Source(
        "http://127.0.0.1:9/sms+spam+collection.zip", "sms+spam+collection.zip",
        member="SMSSpamCollection"))
    with pytest.raises(DownloadError) as e:
        sources.fetch("sms-spam", progress=False)
    msg = str(e.value)
    assert f"{tmp_path / 'mirror' / 'sms+spam+collection.zip'} does not exist" in msg
    assert "may hold the unpacked 'SMSSpamCollection' instead of 'sms+spam+collection.zip'" in msg
    (tmp_path / "mirror" / "SMSSpamCollection").write_text("ham\thello\n")
    assert sources.fetch("sms-spam", progress=False) == tmp_path / "mirror" / "SMSSpamCollection"
