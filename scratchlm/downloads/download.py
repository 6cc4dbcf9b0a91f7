"""Fetch files into a local cache: progress bar, resume, integrity checks, atomic rename, mirror.

What it does not do: know about particular data sets (see ``downloads/sources.py``) or parse files.

Where files go
--------------
``cache_dir()`` is ``$SCRATCHLM_CACHE`` when set, else ``$XDG_CACHE_HOME/scratchlm`` (or
``~/.cache/scratchlm``). A download is written to ``NAME.part`` and renamed to ``NAME`` only when
it is complete and has passed its checks, so a crash never leaves a half file under the final
name. File names may come from outside (a shard name in a remote index): ``safe_path`` refuses
any name that is absolute, holds ``..`` or a backslash, or resolves outside the cache.

What is checked
---------------
- the caller's sha256 when it is known (data sets in ``sources.py``);
- otherwise what the server vouches for: Hugging Face's ``X-Linked-Etag`` (the sha256 of an LFS
  file, sent with the redirect to its storage) and ``X-Linked-Size``, or the git blob sha1 that
  the Hub sends as the ``ETag`` of a small file (recognised by its ``X-Repo-Commit`` header);
- always the length: ``Content-Length`` (or ``Content-Range``'s total). A body with no length, no
  chunked framing and no digest cannot be told from one cut short, so it never lands.

Resume
------
A ``.part`` file is resumed with ``Range`` only together with ``If-Range`` and the validator
(ETag or Last-Modified) of the reply it came from, stored beside it in ``NAME.part.json``; a
``.part`` without one is started over. A 206 reply whose ``Content-Range`` does not start where
the ``.part`` ends is refused.

Mirrors
-------
``$SCRATCHLM_MIRROR`` (or the ``mirror`` argument) names a local folder or a URL base that is
consulted first, by file name. Offline machines point it at a folder of pre-fetched files.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

CHUNK = 1 << 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checks; the message says what to do."""


class IntegrityError(DownloadError):
    """The bytes arrived but cannot be trusted (wrong digest or size, cut short, a reply that
    does not fit the request, a name that leaves the cache): another address will not help."""


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    env = os.environ.get("SCRATCHLM_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scratchlm"


def default_mirror() -> str | None:
    return os.environ.get("SCRATCHLM_MIRROR") or None


def safe_path(folder: str | Path, name: str, *, resolve: bool = True) -> Path:
    """``folder / name`` for a relative ``name`` that stays inside ``folder``; anything else
    (absolute, ``..``, backslashes, NUL, empty parts, and with ``resolve`` a link that points
    out of the folder) is a DownloadError."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise IntegrityError(f"refusing file name {name!r}: not a plain relative path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        raise IntegrityError(f"refusing file name {name!r}: it would leave {folder}")
    folder = Path(folder)
    path = folder / Path(*parts)
    if resolve and not path.resolve().is_relative_to(folder.resolve()):
        raise IntegrityError(f"refusing file name {name!r}: it resolves outside {folder}")
    return path


def sha256_file(path: str | Path) -> str:
    return _digest_file(path, hashlib.sha256())


def git_blob_sha1(path: str | Path) -> str:
    """The id git (and the Hugging Face Hub) gives a file: sha1 of ``blob <size>\\0`` + bytes."""
    h = hashlib.sha1()
    h.update(f"blob {Path(path).stat().st_size}\0".encode())
    return _digest_file(path, h)


def _digest_file(path, h) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_digest(path: Path, sha256: str | None, source: str) -> None:
    if sha256 is None:
        return
    got = sha256_file(path)
    if got != sha256:
        raise IntegrityError(
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
    ``filename`` defaults to the last component of the URL path; it must stay inside the cache.
    """
    filename = filename or Path(urllib.parse.urlparse(url).path).name
    if not filename:
        raise ValueError(f"cannot derive a file name from {url!r}; pass filename=")
    folder = Path(cache) if cache is not None else cache_dir()
    dest = safe_path(folder, filename)
    if dest.exists():
        try:
            _check_digest(dest, sha256, str(dest))
            return dest
        except DownloadError:
            dest.unlink()  # a stale or damaged cache entry: fetch again

    mirror = mirror if mirror is not None else default_mirror()
    tried = ""
    if mirror:
        if _is_url(mirror):
            base = mirror if mirror.endswith("/") else mirror + "/"
            address = base + urllib.parse.quote(filename)
            try:
                return _fetch(address, dest, sha256, progress, timeout, headers)
            except DownloadError as e:
                tried = f"\nThe mirror was tried first: {address} ({e})."
        else:
            # the user's own folder: its links may point anywhere they chose
            local = safe_path(Path(mirror).expanduser(), filename, resolve=False)
            if local.is_file():
                _check_digest(local, sha256, str(local))
                return local
            tried = f"\nThe mirror folder was tried first: {local} does not exist."

    try:
        return _fetch(url, dest, sha256, progress, timeout, headers)
    except IntegrityError:
        raise
    except DownloadError as e:
        raise DownloadError(
            f"{e}{tried}\nCould not fetch {url} into {dest}. If this machine is offline, put the "
            f"file there by hand or set SCRATCHLM_MIRROR to a folder (or URL base) holding "
            f"{filename!r}."
        ) from None


@dataclass
class _Vouched:
    """What the server (or a redirect on the way) says the file is."""

    sha256: str | None = None
    git_sha1: str | None = None
    size: int | None = None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping the Hub's ``X-Linked-*`` headers that only the redirect carries
    and dropping ``Authorization`` when the next hop is another host."""

    def __init__(self, vouched: _Vouched):
        self.vouched = vouched

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _read_vouched(headers, self.vouched)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlparse(newurl).netloc != urllib.parse.urlparse(
                req.full_url).netloc:
            for key in [k for k in new.headers if k.lower() == "authorization"]:
                del new.headers[key]
            new.unredirected_hdrs.pop("Authorization", None)
        return new


def _etag(headers) -> str | None:
    tag = headers.get("ETag")
    if not tag:
        return None
    return tag.removeprefix("W/").strip('"').lower()


def _read_vouched(headers, vouched: _Vouched) -> None:
    linked = (headers.get("X-Linked-Etag") or "").removeprefix("W/").strip('"').lower()
    if _HEX64.fullmatch(linked):
        vouched.sha256 = linked
    size = headers.get("X-Linked-Size")
    if size and size.isdigit():
        vouched.size = int(size)
    tag = _etag(headers) or ""
    if headers.get("X-Repo-Commit") and vouched.sha256 is None:
        if _HEX64.fullmatch(tag):
            vouched.sha256 = tag
        elif _HEX40.fullmatch(tag):
            vouched.git_sha1 = tag


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_meta(part: Path, url: str) -> dict | None:
    try:
        meta = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("url") != url or not meta.get("validator"):
        return None
    return meta


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _fetch(url: str, dest: Path, sha256: str | None, progress: bool, timeout: float,
           headers: dict[str, str] | None = None) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    meta = _read_meta(part, url) if part.exists() else None
    if part.exists() and meta is None:
        _discard(part)  # no validator: its bytes might belong to another version of the file
    have = part.stat().st_size if meta is not None else 0
    req = urllib.request.Request(url, headers={"User-Agent": "scratchlm", **(headers or {})})
    if have:
        req.add_header("Range", f"bytes={have}-")
        req.add_header("If-Range", meta["validator"])
    vouched = _Vouched()
    try:
        resp = urllib.request.build_opener(_Redirects(vouched)).open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and meta.get("total") == have:  # the .part is already whole
            return _finish(part, dest, _Vouched(**meta.get("vouched", {})), sha256, url, have)
        if e.code == 416 and have:
            _discard(part)
            raise DownloadError(f"HTTP 416 for {url}: the partial file no longer fits; it was "
                                "discarded, call again to start over") from None
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
    with resp:
        _read_vouched(resp.headers, vouched)
        have, total = _reply_span(resp, url, part, have, vouched, sha256)
        _remember(resp, url, part, total, vouched)
        got = _receive(resp, url, part, dest.name, have, total, progress)
    if total is not None and got < total:
        raise IntegrityError(
            f"truncated transfer of {url}: got {got} of {total} bytes, kept in {part}; "
            "call again to resume"
        )
    if total is not None and got > total:
        _discard(part)
        raise IntegrityError(f"refusing the reply from {url}: it sent {got} bytes, more than the "
                            f"{total} it announced")
    return _finish(part, dest, vouched, sha256, url, got)


def _reply_span(resp, url: str, part: Path, have: int, vouched: "_Vouched",
                sha256: str | None) -> tuple[int, int | None]:
    """(the bytes of ``part`` the reply continues, the file's whole size or None): a 206 must
    start where ``part`` ends; a 200 starts over. A reply whose end could not be told (no
    length, no chunked framing, no digest) is refused."""
    length = resp.headers.get("Content-Length")
    length = int(length) if length is not None and length.isdigit() else None
    if resp.status == 206:
        match = _CONTENT_RANGE.fullmatch((resp.headers.get("Content-Range") or "").strip())
        start = int(match.group(1)) if match else None
        if not have or start != have:
            _discard(part)
            raise IntegrityError(
                f"refusing the reply from {url}: it sent bytes starting at {start} (Content-"
                f"Range {resp.headers.get('Content-Range')!r}) for a request "
                + (f"from byte {have}" if have else "of the whole file")
                + "; the partial file was discarded, call again to start over")
        if match.group(3) != "*":
            total = int(match.group(3))
        else:
            total = have + length if length is not None else None
    else:
        have = 0  # a full reply (the file changed, or the server ignores ranges): start over
        total = length
    if vouched.size is not None and total is not None and vouched.size != total:
        raise IntegrityError(f"refusing the reply from {url}: it is {total} bytes, the server "
                            f"said the file is {vouched.size}")
    total = total if total is not None else vouched.size
    known = sha256 or vouched.sha256 or vouched.git_sha1
    if total is None and not getattr(resp, "chunked", False) and not known:
        raise IntegrityError(
            f"refusing the reply from {url}: it has no Content-Length, no chunked framing "
            "and no digest, so a transfer cut short could not be told from a whole file; "
            "pass sha256= to download it")
    return have, total


def _remember(resp, url: str, part: Path, total: int | None, vouched: "_Vouched") -> None:
    """Beside ``part``, what a later call needs to resume it: the reply's strong validator
    (ETag or Last-Modified), the whole size and what the server vouched for; no validator,
    no resume."""
    validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
    if validator and not validator.startswith("W/"):
        _meta_path(part).write_text(json.dumps({
            "url": url, "validator": validator, "total": total, "vouched": vars(vouched)}))
    else:
        _meta_path(part).unlink(missing_ok=True)


def _receive(resp, url: str, part: Path, name: str, have: int, total: int | None,
             progress: bool) -> int:
    """The reply's bytes appended to ``part`` (after its first ``have``), with a progress bar;
    the bytes ``part`` then holds. A cut keeps them for the next call to resume."""
    got = have
    with open(part, "ab" if have else "wb") as f, tqdm(
        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
        desc=name, disable=not progress, leave=False,
    ) as bar:
        try:
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                got += len(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:
            raise IntegrityError(
                f"truncated transfer of {url}: {got} bytes kept in {part} ({e}); "
                "call again to resume"
            ) from None
    return got


def _finish(part: Path, dest: Path, vouched: _Vouched, sha256: str | None, url: str,
            size: int) -> Path:
    try:
        if vouched.size is not None and size != vouched.size:
            raise IntegrityError(f"size mismatch for {url}: the server said {vouched.size} bytes, "
                                f"got {size}")
        _check_digest(part, sha256 or vouched.sha256, url)
        if sha256 is None and vouched.sha256 is None and vouched.git_sha1 is not None:
            got = git_blob_sha1(part)
            if got != vouched.git_sha1:
                raise IntegrityError(f"checksum mismatch for {url}: the server's git sha1 is "
                                    f"{vouched.git_sha1}, got {got}")
    except DownloadError:
        _discard(part)
        raise
    os.replace(part, dest)
    _meta_path(part).unlink(missing_ok=True)
    return dest
