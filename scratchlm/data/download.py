"""Fetch files into a local cache: progress bar, resume, sha256 check, atomic rename, mirror.

What it does not do: know about particular data sets (see ``data/sources.py``) or parse files.

Where files go
--------------
``cache_dir()`` is ``$SCRATCHLM_CACHE`` when set, else ``$XDG_CACHE_HOME/scratchlm`` (or
``~/.cache/scratchlm``). A download is written to ``NAME.part`` and renamed to ``NAME`` only when
it is complete and its digest (if known) matches, so a crash never leaves a half file under the
final name; a later call resumes the ``.part`` file with an HTTP Range request.

Mirrors
-------
``$SCRATCHLM_MIRROR`` (or the ``mirror`` argument) names a local folder or a URL base that is
consulted first, by file name. Offline machines point it at a folder of pre-fetched files.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checks; the message says what to do."""


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    env = os.environ.get("SCRATCHLM_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scratchlm"


def default_mirror() -> str | None:
    return os.environ.get("SCRATCHLM_MIRROR") or None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_digest(path: Path, sha256: str | None, source: str) -> None:
    if sha256 is None:
        return
    got = sha256_file(path)
    if got != sha256:
        raise DownloadError(
            f"checksum mismatch for {source}: expected sha256 {sha256}, got {got} ({path})"
        )


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file")


def download(
    url: str,
    filename: str | None = None,
    sha256: str | None = None,
    *,
    cache: str | Path | None = None,
    mirror: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> Path:
    """Return a local path holding the file at ``url``, fetching it if needed.

    Order: the cache (digest checked), then the mirror (by ``filename``), then ``url``.
    ``filename`` defaults to the last component of the URL path.
    """
    filename = filename or Path(urllib.parse.urlparse(url).path).name
    if not filename:
        raise ValueError(f"cannot derive a file name from {url!r}; pass filename=")
    folder = Path(cache) if cache is not None else cache_dir()
    dest = folder / filename
    if dest.exists():
        try:
            _check_digest(dest, sha256, str(dest))
            return dest
        except DownloadError:
            dest.unlink()  # a stale or damaged cache entry: fetch again

    mirror = mirror if mirror is not None else default_mirror()
    if mirror:
        if _is_url(mirror):
            base = mirror if mirror.endswith("/") else mirror + "/"
            try:
                return _fetch(base + urllib.parse.quote(filename), dest, sha256, progress, timeout,
                              headers)
            except DownloadError:
                pass  # fall back to the original address
        else:
            local = Path(mirror).expanduser() / filename
            if local.is_file():
                _check_digest(local, sha256, str(local))
                return local

    try:
        return _fetch(url, dest, sha256, progress, timeout, headers)
    except DownloadError as e:
        if "checksum" in str(e) or "truncated" in str(e):
            raise
        raise DownloadError(
            f"{e}\nCould not fetch {url} into {dest}. If this machine is offline, put the file "
            f"there by hand or set SCRATCHLM_MIRROR to a folder (or URL base) holding "
            f"{filename!r}."
        ) from None


def _fetch(url: str, dest: Path, sha256: str | None, progress: bool, timeout: float,
           headers: dict[str, str] | None = None) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "scratchlm", **(headers or {})})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part file is already whole
            return _finish(part, dest, sha256, url)
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None

    with resp:
        if have and resp.status != 206:  # the server ignored the Range header: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        got = have
        with open(part, mode) as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, disable=not progress, leave=False,
        ) as bar:
            try:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(
                    f"truncated transfer of {url}: {got} bytes kept in {part} ({e}); "
                    "call again to resume"
                ) from None
    if total is not None and got < total:
        raise DownloadError(
            f"truncated transfer of {url}: got {got} of {total} bytes, kept in {part}; "
            "call again to resume"
        )
    return _finish(part, dest, sha256, url)


def _finish(part: Path, dest: Path, sha256: str | None, url: str) -> Path:
    try:
        _check_digest(part, sha256, url)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest

