from __future__ import annotations

import zipfile

import pytest

from scratchlm.downloads import download as dl
from scratchlm.downloads.sources import SOURCES, fetch


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_registered_sources_resolve_with_digest(name):
    path = fetch(name, progress=False)
    src = SOURCES[name]
    assert dl.sha256_file(path) == (src.member_sha256 or src.sha256)


def test_sms_zip_is_unpacked(tmp_path, monkeypatch):
    bare = fetch("sms-spam")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / SOURCES["sms-spam"].filename, "w") as zf:
        zf.write(bare, "SMSSpamCollection")
        zf.writestr("readme", "UCI")
    monkeypatch.setenv("SCRATCHLM_MIRROR", str(mirror))
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    got = fetch("sms-spam", progress=False)
    assert got == tmp_path / "cache" / "SMSSpamCollection"
    assert got.read_bytes() == bare.read_bytes()


def test_unknown_source():
    with pytest.raises(KeyError, match="unknown data set"):
        fetch("no-such-data")
