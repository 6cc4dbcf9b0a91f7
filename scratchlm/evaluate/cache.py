"""What an interrupted evaluation resumes from, and when a cached row may be trusted.

    RUN/eval/cache/TASK.jsonl   a header line {"key": KEY}, then {"index": i, "row": {...}}
                                per finished example

KEY is everything a row depends on: the settings, the model (``model_identity``: its resolved
path and a fingerprint of its weight files, each base of a delta included) and the task file
(``file_sha256``). Rows are reused only under the same key; any other key starts the file over,
so a second model evaluated into the same folder, or a task file whose labels were edited,
never inherits rows computed for something else. Every row read back is checked (its index
within the task, its fields and their types, by the task's own ``check``); a bad one is a
``CacheError`` naming the file and line, never a silently counted or dropped result. Only the
last line may be cut short (the interruption itself): it is cut off and its example redone.

``score_pending`` is the loop of a resumable evaluation: rows of ``done`` are kept, the rest
scored in batches and each handed on (to ``ResultCache.add``) as it comes.

Not here: the report card (``report.py``), the rows themselves (``choice.py``, ``gsm8k.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm.auto import tqdm

# The files whose change means other weights: a folder's tokenizer files are left out, since
# the training recipes write them after their final evaluation (pretrain.py).
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
WEIGHT_NAMES = ("config.json", "lora.json", "adapter_config.json")

# Which part of a key differs, in words, for the "starting over" note.
_KEY_PARTS = {"model": "another model", "task": "another version of the task file",
              "settings": "other settings"}

RowCheck = Callable[[int, dict], "str | None"]  # why row i is not a result of this task; None: ok


class CacheError(ValueError):
    """A cache file that cannot be trusted; the message names the file and line."""


# ------------------------------------------------------------------------------- identities
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    """A model folder's weight and settings files, its ``adapter/`` included."""
    out = []
    for where in (folder, folder / "adapter"):
        if where.is_dir():
            out += sorted(p for p in where.iterdir() if p.is_file() and (
                p.suffix in WEIGHT_SUFFIXES or p.name in WEIGHT_NAMES))
    return out


def _fingerprint(paths: list[str]) -> str:
    """Sizes and modification times of the files behind ``paths`` (files or folders): weights
    are too large to hash at every evaluation, and a rewrite changes its time."""
    h = hashlib.sha256()
    for ref in paths:
        path = Path(ref)
        files = [path] if path.is_file() else _weight_files(path) if path.is_dir() else []
        h.update(f"{ref}\n".encode())  # a preset name, fixed by its published weights
        for f in files:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def model_identity(name: str, adapter: str | None = None, quantize: str | None = None) -> dict:
    """What ``name`` meant when rows were computed: a preset as it is, a file or folder by its
    resolved path and the fingerprint of its files and of every base a delta ``final/`` loads
    through (``checkpoints/delta.base_chain``); a merged ``adapter`` and a ``quantize`` mode too."""
    from scratchlm.checkpoints.delta import base_chain, base_reference

    chain = base_chain(name)
    identity = {"model": chain[0], "fingerprint": _fingerprint(chain)}
    if adapter:
        identity["adapter"] = base_reference(adapter)
        identity["adapter_fingerprint"] = _fingerprint([identity["adapter"]])
    if quantize not in (None, "none"):
        identity["quantize"] = quantize
    return identity


# ------------------------------------------------------------------------------ the cache
def _load_json(line: str, where: str, what: str):
    """The value of one line of a cache file; not JSON is a ``CacheError`` at ``where``."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise CacheError(f"{where}: not a JSON {what} ({e}); delete the file to start "
                         "over") from None


class ResultCache:
    """Per-example rows of one task under one key, appended as they finish; ``done`` holds
    the rows read back (index -> row), each passed by ``check``."""

    def __init__(self, folder: Path, task: str, key: dict, check: RowCheck):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)[:120]
        self.path = Path(folder) / "cache" / f"{safe}.jsonl"
        self.key = key
        self.done: dict[int, dict] = {}
        lines = self._complete_lines()
        if lines and self._old_key(lines[0]) != key:
            print(f"{self.path}: cached for {self._difference(self._old_key(lines[0]))}; "
                  "starting over")
            lines = []
        if lines:
            self.done = self._rows(lines, check)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"key": key}) + "\n", encoding="utf-8")

    def _complete_lines(self) -> list[str]:
        """The file's lines; a last line without its newline (cut by the interruption) is
        removed from the file too, so that rows appended next start on a line of their own."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[:data.rfind(b"\n") + 1]
            os.truncate(self.path, len(data))
        try:
            return data.decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise CacheError(f"{self.path}: not UTF-8 text ({e}); delete it to start "
                             "over") from None

    def _old_key(self, header: str) -> dict | None:
        value = _load_json(header, f"{self.path}:1", "header")
        key = value.get("key") if isinstance(value, dict) else None
        return key if isinstance(key, dict) else None  # None: an older layout, redone

    def _difference(self, old: dict | None) -> str:
        if old is None:
            return "an older cache layout"
        parts = [words for part, words in _KEY_PARTS.items() if old.get(part) != self.key.get(part)]
        return " and ".join(parts) or "another key"

    def _rows(self, lines: list[str], check: RowCheck) -> dict[int, dict]:
        done: dict[int, dict] = {}
        first_line: dict[int, int] = {}
        for n, line in enumerate(lines[1:], 2):
            where = f"{self.path}:{n}"
            index, row = self._parse(line, where)
            if index in first_line:
                raise CacheError(f"{where}: example {index} again (first on line "
                                 f"{first_line[index]}); delete the file to start over")
            problem = check(index, row)
            if problem:
                raise CacheError(f"{where}: example {index}: {problem}; delete the file to "
                                 "start over")
            first_line[index], done[index] = n, row
        return done

    @staticmethod
    def _parse(line: str, where: str) -> tuple[int, dict]:
        item = _load_json(line, where, "line")
        index = item.get("index") if isinstance(item, dict) else None
        if (not isinstance(item, dict) or set(item) != {"index", "row"}
                or isinstance(index, bool) or not isinstance(index, int) or index < 0
                or not isinstance(item["row"], dict)):
            raise CacheError(f"{where}: not a cached row ({{\"index\": N >= 0, \"row\": "
                             "{...}} expected); delete the file to start over")
        return index, item["row"]

    def add(self, index: int, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"index": index, "row": row}) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ----------------------------------------------------------------------------- resuming
def score_pending(n: int, score: Callable[[list[int], int], Iterable[dict]], batch_size: int,
                  done: dict[int, dict] | None = None,
                  on_result: Callable[[int, dict], None] | None = None,
                  desc: str = "", unit: str = "example", progress: bool = True) -> list[dict]:
    """The rows of examples ``0 .. n-1``: those in ``done`` (a ``ResultCache``'s), and the rest
    from ``score(chunk, start)`` in batches of ``batch_size`` (``chunk``: the indices to score,
    ``start``: the chunk's offset among those pending; it yields a row per index, in order),
    each handed to ``on_result(index, row)`` (``ResultCache.add``) as it comes. A row of
    ``done`` past ``n`` is not returned."""
    rows: dict[int, dict] = dict(done or {})
    todo = [i for i in range(n) if i not in rows]
    bar = tqdm(total=len(todo), desc=desc, unit=unit, disable=not progress)
    for start in range(0, len(todo), batch_size):  # a batch of examples scored together
        chunk = todo[start:start + batch_size]
        for i, row in zip(chunk, score(chunk, start)):
            rows[i] = row
            if on_result is not None:
                on_result(i, row)
        bar.update(len(chunk))
    bar.close()
    return [rows[i] for i in range(n)]
