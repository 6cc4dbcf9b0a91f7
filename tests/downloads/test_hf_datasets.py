"""Hub data sets (``hf://datasets/ORG/NAME[/SUBSET][@REV]``) against a Hub on 127.0.0.1: the
tree listing (paged), each file through the downloader with the listing's sha256 checked, a
hostile listing refused, and the mirror when offline."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scratchlm.downloads.download import DownloadError, IntegrityError
from scratchlm.downloads.hf import fetch_dataset, parse_spec


def _parquet(texts) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf)
    return buf.getvalue()


FILES = {"sample/10BT/000.parquet": _parquet(["one", "two"]),
         "sample/10BT/001.parquet": _parquet(["three"])}


class Hub(http.server.BaseHTTPRequestHandler):
    listing: list = []  # pages of the tree listing
    wrong_sha = False
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        Hub.requests.append(self.path)
        if self.path.startswith("/api/datasets/o/fineweb/tree/main/sample/10BT?recursive=true"):
            page = int(self.path.split("page=")[1]) if "page=" in self.path else 0
            body = json.dumps(Hub.listing[page]).encode()
            self.send_response(200)
            if page + 1 < len(Hub.listing):
                self.send_header("Link", f'<{self.path.split("&page")[0]}&page={page + 1}>; '
                                         'rel="next"')
            return self._send(body)
        prefix = "/datasets/o/fineweb/resolve/main/"
        if self.path.startswith(prefix) and self.path[len(prefix):] in FILES:
            self.send_response(200)
            return self._send(FILES[self.path[len(prefix):]])
        self.send_error(404)

    def _send(self, body):
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _entry(path, sha=None):
    sha = sha or hashlib.sha256(FILES[path]).hexdigest()
    return {"type": "file", "path": path, "size": len(FILES[path]),
            "lfs": {"oid": sha, "size": len(FILES[path])}}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    Hub.listing = [[_entry("sample/10BT/000.parquet"),
                    {"type": "directory", "path": "sample/10BT/x"}],
                   [_entry("sample/10BT/001.parquet"),
                    {"type": "file", "path": "sample/10BT/README.md", "size": 3}]]
    Hub.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SCRATCHLM_MIRROR", str(tmp_path / "mirror"))
    yield tmp_path
    httpd.shutdown()
    httpd.server_close()


def test_spec_forms():
    assert parse_spec("hf://datasets/o/fineweb") == ("o/fineweb", "", "main")
    assert parse_spec("hf://datasets/o/fineweb/sample/10BT@v1") == ("o/fineweb", "sample/10BT",
                                                                     "v1")
    assert parse_spec("hf://datasets/o/fineweb@v1/sample/10BT") == ("o/fineweb", "sample/10BT",
                                                                     "v1")
    for bad in ("hf://datasets/o", "hf://datasets/o/n/../x", "hf://models/o/n",
                "hf://datasets/o/n@a/b@c"):
        with pytest.raises(ValueError, match="not a Hub data set"):
            parse_spec(bad)


def test_a_paged_listing_fetches_every_parquet_file(hub):
    paths = fetch_dataset("hf://datasets/o/fineweb/sample/10BT", progress=False)
    assert [p.name for p in paths] == ["000.parquet", "001.parquet"]
    assert paths[0].read_bytes() == FILES["sample/10BT/000.parquet"]
    assert str(paths[0]).startswith(str(hub / "cache" / "hf-datasets" / "o" / "fineweb"))
    from scratchlm.data.documents import mix_documents, resolve_source

    docs = mix_documents([resolve_source("hf://datasets/o/fineweb/sample/10BT")])
    assert [d.text for d in docs] == ["one", "two", "three"]


def test_the_listings_sha256_is_checked(hub):
    Hub.listing = [[_entry("sample/10BT/000.parquet", sha="0" * 64)]]
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        fetch_dataset("hf://datasets/o/fineweb/sample/10BT", progress=False)


@pytest.mark.parametrize("path", ["../../etc/passwd.parquet", "/abs/x.parquet",
                                  "other/x.parquet"])
def test_a_hostile_listing_is_refused(hub, path):
    Hub.listing = [[{"type": "file", "path": path, "size": 1}]]
    with pytest.raises(DownloadError):
        fetch_dataset("hf://datasets/o/fineweb/sample/10BT", progress=False)
    assert not any("etc" in r or "abs" in r for r in Hub.requests[1:])


def test_offline_the_mirror_serves_what_was_fetched_before(hub, monkeypatch):
    folder = hub / "mirror" / "hf-datasets" / "o" / "fineweb" / "main" / "sample" / "10BT"
    folder.mkdir(parents=True)
    (folder / "000.parquet").write_bytes(FILES["sample/10BT/000.parquet"])
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    paths = fetch_dataset("hf://datasets/o/fineweb/sample/10BT", progress=False)
    assert paths == [folder / "000.parquet"]
    monkeypatch.setenv("SCRATCHLM_MIRROR", str(hub / "empty"))
    with pytest.raises(DownloadError, match="cannot list the data set"):
        fetch_dataset("hf://datasets/o/fineweb/sample/10BT", progress=False)
