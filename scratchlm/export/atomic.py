"""Exports land whole or not at all, one per destination, with nothing left beside them.

    with staging(dest) as part:          # .NAME.<random>.tmp in dest's folder
        write the export to part
        replace_file(part, dest)         # or replace_folder for a folder

Each export writes under its own hidden temporary name in the destination's folder (the same
disk, so the move is a rename), so two exports to one path never write into one file. The
temporary is flushed to the disk, then renamed onto the destination in one step: a reader sees
the old export or the new one, and of two exports at once the last to finish wins, whole.
Whatever ends the block, the temporary (or, after a folder swap, the old export) is removed.
A failed write (a full disk, a read-only folder) becomes one ``ExportWriteError`` line naming
the destination, its disk's folder and free space, and the system's reason.

Not here: what goes into the files (``gguf.py``, ``hf.py``, ``ollama.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

# Rust libraries (safetensors, tokenizers) raise their I/O errors as text, not as OSError:
# "Os { code: 28, kind: StorageFull, ... }" (Debug) or "... (os error 28)" (Display)
_RUST_ERRNO = re.compile(r"Os \{ code: (\d+)|\(os error (\d+)\)")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # linux/fcntl.h, linux/fs.h
_SWAP_TRIES = 100  # other exports to the same folder moving in between; then give up


class ExportWriteError(OSError):
    """Writing an export failed (full disk, permissions); the message names the destination,
    the folder whose disk it is on and the system's reason, on one line."""


def _errno_of(e: BaseException) -> int | None:
    if isinstance(e, OSError):
        return e.errno
    m = _RUST_ERRNO.search(str(e))
    return int(m.group(1) or m.group(2)) if m else None


def write_error(e: BaseException, dest: Path) -> ExportWriteError | None:
    """``e`` as one ``ExportWriteError`` line about ``dest``; None when ``e`` is no I/O
    failure (a bad model, say), which keeps its own message."""
    while isinstance(e, ExportWriteError) and e.__cause__ is not None:
        e = e.__cause__  # a nested staging's error: described again for the outer ``dest``
    code = _errno_of(e)
    if code is None and not isinstance(e, OSError):
        return None
    reason = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})" if code else str(e)
    folder = dest.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:,.1f} MB free"
    except OSError:
        free = "free space unknown"
    err = ExportWriteError(f"cannot write {dest}: {reason}; the disk holding {folder} has "
                           f"{free}")
    err.errno = code
    return err


def _temp_beside(dest: Path) -> Path:
    # a random name, not created yet: mkstemp/mkdtemp would make it 0600/0700, and the export
    # must get the usual permissions
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def staging(dest: str | Path, folder: bool = False) -> Iterator[Path]:
    """A fresh temporary beside ``dest`` (an empty folder if ``folder``, else a file name not
    yet created) to write an export into and publish with ``replace_file``/``replace_folder``.
    It is removed when the block ends, whatever ends it; an I/O failure in the block is
    raised as an ``ExportWriteError`` naming ``dest``."""
    dest = Path(dest)
    part = _temp_beside(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            part.mkdir()
        yield part
    except BaseException as e:
        err = write_error(e, dest)
        if err is None:
            raise
        raise err from e
    finally:
        _remove(part)


def _fsync(path: Path) -> None:
    """Flush one file, or a folder's list of names, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot flush a folder; its files are flushed
        if not (path.is_dir() and e.errno in (errno.EINVAL, errno.EOPNOTSUPP)):
            raise
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush ``path`` (a file, or a folder and all in it) to the disk before it is renamed:
    otherwise a crash soon after can leave the new name pointing at empty files."""
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
    _fsync(path)


def replace_file(part: Path, dest: Path) -> None:
    """Move the finished file ``part`` onto ``dest`` in one rename (replacing an old one)."""
    _fsync_tree(part)
    os.replace(part, dest)
    _fsync(dest.parent)  # the rename itself


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or filesystem cannot; OSError when either is gone."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a C library without it
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(part: Path, dest: Path, aside: Path) -> bool:
    """One try at putting folder ``part`` at ``dest``; False when ``dest`` changed meanwhile.
    An old ``dest`` ends up at ``part`` (exchanged) or at ``aside``."""
    try:
        os.rename(part, dest)  # nothing there yet (or an empty folder)
        return True
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
    try:
        if _exchange(part, dest):
            return True
        # no atomic exchange here: move the old one aside; readers briefly find no folder
        _remove(aside)
        os.rename(dest, aside)
    except FileNotFoundError:
        pass  # another export took dest away between our two renames: try again
    return False


def replace_folder(part: Path, dest: Path) -> None:
    """Move the finished folder ``part`` onto ``dest``, replacing an old one; the old one is
    removed (the ``staging`` block removes what is left at ``part``)."""
    _fsync_tree(part)
    aside = part.with_name(part.name + ".old")
    try:
        for _ in range(_SWAP_TRIES):
            if _swap_in(part, dest, aside):
                _fsync(dest.parent)
                return
        raise OSError(errno.EBUSY, f"{dest} kept changing while other exports replaced it")
    finally:
        _remove(aside)


@contextlib.contextmanager
def gguf_file(path: str | Path, arch: str):
    """A ``gguf.GGUFWriter`` for ``path``, on a staged temporary file: what the with-block adds
    is written, the file closed and renamed onto ``path`` at the end, and nothing is left
    behind when the block fails."""
    import gguf

    path = Path(path)
    with staging(path) as part:
        w = gguf.GGUFWriter(str(part), arch)
        try:
            yield w
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
        replace_file(part, path)
