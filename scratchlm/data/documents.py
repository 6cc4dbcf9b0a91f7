"""Documents from the files corpora are published in, streamed one at a time.

    .txt (and any other suffix)     the whole file is one document (read in blocks by prepare)
    .jsonl  .jsonl.gz  .jsonl.zst   one JSON object a line, its text in ``text_field``
    .json   .json.gz   .json.zst    JSON lines too (Dolma's ``.json.gz``), or one JSON array
    .parquet                        the ``text_field`` column, one row group at a time

A source is a file, a folder (its files of these kinds, sorted, recursively), a glob
(``shards/*.parquet``), a registered data set name, or a Hub data set
(``hf://datasets/ORG/NAME[/SUBSET][@REV]``, its parquet files fetched by
``downloads/hf.py``). ``path:0.7`` gives a source a weight in a mixture
(``mix_documents``); a ``.yaml`` file lists such sources (``data/mixtures.py``).

Nothing is read whole: peak memory is one JSON line or one parquet row group. Bad input is a
``DataFileError`` that names the file and the line (or row), and the field: a missing or
non-string text field, bad JSON, bad UTF-8, a truncated zstd or gzip stream, a corrupt parquet
row group.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scratchlm.data.text_file import DataFileError, read_text, utf8_error

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED = (".gz", ".zst")
PARQUET = ".parquet"


@dataclass(frozen=True)
class Document:
    text: str
    where: str  # "file:line" or "file: row N", for messages
    whole_file: bool = False  # a text file read whole (the book's special-token strings count)


def kind(path: str | Path) -> str:
    """"parquet", "json" (lines or an array, maybe compressed) or "text"."""
    name = Path(path).name.lower()
    for comp in COMPRESSED:
        name = name.removesuffix(comp)
    if name.endswith(PARQUET):
        return "parquet"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    return "text"


def is_corpus_file(path: Path) -> bool:
    """A file a folder source contributes: the kinds above, never hidden or partial files."""
    name = path.name.lower()
    return (path.is_file() and not name.startswith(".") and not name.endswith(".part")
            and (kind(path) != "text" or name.endswith(".txt")))


@dataclass(frozen=True)
class Source:
    """One ``--data`` item: its files and its weight in a mixture."""

    spec: str
    files: tuple[Path, ...]
    weight: float | None = None  # None: not part of a weighted mixture


def document_ids(tokenizer, doc: Document) -> list[int]:
    """A document's token ids: a text file read whole as the book reads it (special-token
    strings in it count), any other document as plain text; closed by the tokenizer's
    end-of-text, or opened by its BOS when it has no end-of-text."""
    from scratchlm.tokenizers.base import encode_ordinary

    ids = list(tokenizer.encode(doc.text, allowed_special="all") if doc.whole_file
               else encode_ordinary(tokenizer, doc.text))
    eos, bos = tokenizer.eos_id, getattr(tokenizer, "bos_id", None)
    if eos is not None:
        ids.append(eos)
    elif bos is not None:
        ids.insert(0, bos)
    return ids


def split_weight(spec: str) -> tuple[str, float | None]:
    """``"a.parquet:0.7"`` -> ("a.parquet", 0.7); a spec whose tail is no number keeps it."""
    head, sep, tail = spec.rpartition(":")
    if not sep or not head or "/" in tail:
        return spec, None
    try:
        weight = float(tail)
    except ValueError:
        return spec, None
    if not weight > 0 or weight == float("inf"):
        raise ValueError(f"--data {spec!r}: a weight must be a positive number, got {tail!r}")
    return head, weight


def resolve_source(spec: str, *, progress: bool = True) -> Source:
    """The files of one ``--data`` item (see the module doc)."""
    from scratchlm.downloads.sources import SOURCES, fetch

    name, weight = split_weight(spec)
    if name.startswith("hf://"):
        from scratchlm.downloads.hf import fetch_dataset

        return Source(spec, tuple(fetch_dataset(name, progress=progress)), weight)
    path = Path(name).expanduser()
    if name in SOURCES and not path.exists():
        return Source(spec, (fetch(name, progress=progress),), weight)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if is_corpus_file(p))
        if not files:
            raise DataFileError(f"{path}: no .txt, .jsonl(.gz/.zst), .json or .parquet files")
        return Source(spec, tuple(files), weight)
    if path.is_file():
        return Source(spec, (path,), weight)
    if glob.has_magic(name):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                       if Path(p).is_file())
        if not files:
            raise DataFileError(f"{name}: no file matches")
        return Source(spec, tuple(files), weight)
    raise DataFileError(f"data {name!r}: no such file, folder or registered data set")


CHUNK = 1 << 20
MAX_LINE = 256 << 20  # one JSON line (one document) at most: a file without newlines is refused


Progress = Callable[[int], None]  # told the bytes of a file read so far, as they are read


def _noop(n: int) -> None:
    pass


class _Counted:
    """A file object that tells ``progress`` how many bytes were read from it."""

    def __init__(self, f, progress: Progress):
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress(len(data))
        return data


def _chunks(path: Path, progress: Progress = _noop) -> Iterator[bytes]:
    """The decompressed bytes of a file, a chunk at a time (gzip and zstd streamed). A stream
    cut short is an EOFError (gzip's own check; for zstd, a frame left open at the end)."""
    name = path.name.lower()
    with open(path, "rb") as raw:
        f = _Counted(raw, progress)
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=f) as g:
                yield from iter(lambda: g.read1(CHUNK), b"")
            return
        if not name.endswith(".zst"):
            yield from iter(lambda: f.read(CHUNK), b"")
            return
        import zstandard

        dctx, obj = zstandard.ZstdDecompressor(), None
        for data in iter(lambda: f.read(CHUNK), b""):
            while data:
                obj = obj or dctx.decompressobj()
                out = obj.decompress(data)
                if out:
                    yield out
                data = obj.unused_data if obj.eof else b""
                if obj.eof:
                    obj = None  # the next frame of a multi-frame file
        if obj is not None:
            raise EOFError("the last zstd frame ends early")


def _text_of(value, field: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) or value is None:
        got = "no field" if value is None else "an object in field"
        raise DataFileError(f"{where}: {got} {field!r}")
    raise DataFileError(f"{where}: field {field!r} is {type(value).__name__}, not text")


def _stream_errors() -> tuple[type[Exception], ...]:
    """What a damaged gzip or zstd stream raises."""
    import zlib

    import zstandard

    return (OSError, zlib.error, zstandard.ZstdError)


@dataclass(frozen=True)
class JsonBlock:
    """Whole lines of a JSON Lines file (or a whole JSON array), decompressed: a unit of work
    that a worker process can parse on its own."""

    path: Path
    data: bytes
    first_line: int
    array: bool = False

    def texts(self, field: str) -> list[str]:
        """The documents' texts (what ``documents`` gives, without the objects)."""
        if not self.array:
            try:  # the lines as one JSON array: one call parses them 2.5x faster than one a line
                items = json.loads("[" + self.data.decode("utf-8").replace("\n", ",") + "]")
                texts = [o[field] for o in items]  # KeyError / TypeError: not all objects
                if all(type(t) is str for t in texts):
                    return texts
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
                    RecursionError):
                pass  # a bad line, or a blank one: line by line, to name it
        return [d.text for d in self.documents(field)]

    def documents(self, field: str) -> Iterator[Document]:
        if self.array:
            yield from _json_array(self.path, self.data, field)
            return
        for i, raw in enumerate(self.data.split(b"\n")):
            if raw.strip():
                yield _json_line(self.path, self.first_line + i, raw, field)


def json_blocks(path: Path, progress: Progress = _noop) -> Iterator[JsonBlock]:
    """A JSON Lines file as blocks of whole lines of about a megabyte (a JSON array: one
    block); a truncated or damaged compressed stream is a DataFileError after the blocks read
    whole before it."""
    line_no = 1
    chunks = _chunks(path, progress)
    try:
        head = next(chunks, b"")
        if head.lstrip()[:1] == b"[":  # one JSON array (of objects or strings): read whole
            yield JsonBlock(path, head + b"".join(chunks), 1, array=True)
            return
        rest = b""
        for chunk in itertools.chain([head], chunks):
            if len(rest) > MAX_LINE:
                raise DataFileError(f"{path}:{line_no}: a line longer than {MAX_LINE >> 20} MB "
                                    "(is this JSON Lines?)")
            data, pos = rest + chunk, 0
            while True:  # blocks of whole lines, about CHUNK bytes each
                cut = data.rfind(b"\n", pos, pos + CHUNK) + 1 or data.find(b"\n", pos) + 1
                if not cut:
                    break
                yield JsonBlock(path, data[pos:cut - 1], line_no)
                line_no += data.count(b"\n", pos, cut)
                pos = cut
            rest = data[pos:]
        if rest:
            yield JsonBlock(path, rest, line_no)
    except EOFError as e:
        raise DataFileError(f"{path}: the compressed stream is truncated after line "
                            f"{line_no - 1} ({e})") from None
    except _stream_errors() as e:
        raise DataFileError(f"{path}: cannot read past line {line_no - 1} ({e})") from None


def _json_documents(path: Path, field: str, progress: Progress) -> Iterator[Document]:
    for block in json_blocks(path, progress):
        yield from block.documents(field)


def _json_line(path: Path, line_no: int, raw: bytes, field: str) -> Document:
    where = f"{path}:{line_no}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(utf8_error(path, raw, e, first_line=line_no)) from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFileError(f"{where}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise DataFileError(f"{where}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise DataFileError(f"{where}: a JSON object expected, got {type(obj).__name__}")
    return Document(_text_of(obj.get(field), field, where), where)


def _json_array(path: Path, data: bytes, field: str) -> Iterator[Document]:
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataFileError(utf8_error(path, data, e)) from None
    except json.JSONDecodeError as e:
        raise DataFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for i, item in enumerate(items):
        where = f"{path}: item {i}"
        yield Document(item if isinstance(item, str) else
                       _text_of(item.get(field) if isinstance(item, dict) else item, field,
                                where), where)


@dataclass(frozen=True)
class ParquetGroup:
    """One row group of a parquet file: a unit of work that a worker process can read on its
    own (the column was checked when the file was opened)."""

    path: Path
    group: int
    first_row: int

    def texts(self, field: str) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            column = pq.ParquetFile(self.path).read_row_group(self.group,
                                                              columns=[field]).column(0)
        except (pa.ArrowException, OSError) as e:
            raise DataFileError(f"{self.path}: row group {self.group} (rows from "
                                f"{self.first_row}) is corrupt ({e})") from None
        texts = column.to_pylist()
        if column.null_count:
            row = self.first_row + texts.index(None)
            raise DataFileError(f"{self.path}: row {row}: column {field!r} is null")
        return texts

    def documents(self, field: str) -> Iterator[Document]:
        for i, text in enumerate(self.texts(field)):
            yield Document(text, f"{self.path}: row {self.first_row + i}")


def parquet_groups(path: Path, field: str, progress: Progress = _noop) -> Iterator[ParquetGroup]:
    """The row groups of a parquet file whose ``field`` column holds text; ``progress`` is told
    each group's size on disk as it is handed out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as e:
        raise DataFileError(f"{path}: not a readable parquet file ({e})") from None
    if field not in schema.names:
        raise DataFileError(f"{path}: no column {field!r} (columns: {', '.join(schema.names)});"
                            f" choose one with --text_field")
    kind_ = schema.field(field).type
    if not (pa.types.is_string(kind_) or pa.types.is_large_string(kind_)):
        raise DataFileError(f"{path}: column {field!r} holds {kind_}, not text")
    row = 0
    for group in range(meta.num_row_groups):
        info = meta.row_group(group)
        progress(sum(info.column(j).total_compressed_size for j in range(info.num_columns)))
        yield ParquetGroup(path, group, row)
        row += info.num_rows


def _parquet_documents(path: Path, field: str, progress: Progress) -> Iterator[Document]:
    for group in parquet_groups(path, field, progress):
        yield from group.documents(field)


def file_documents(path: str | Path, text_field: str = "text",
                   progress: Progress = _noop) -> Iterator[Document]:
    """The documents of one file, in order (see the module doc); ``progress`` is told the
    bytes of the file read (parquet: each row group's size on disk)."""
    path = Path(path)
    k = kind(path)
    if k == "parquet":
        yield from _parquet_documents(path, text_field, progress)
    elif k == "json":
        yield from _json_documents(path, text_field, progress)
    else:
        progress(path.stat().st_size)
        yield from TextFile(path).documents()


def source_documents(source: Source, text_field: str = "text",
                     progress: Progress = _noop) -> Iterator[Document]:
    for path in source.files:
        yield from file_documents(path, text_field, progress)


def check_text_field(sources: Sequence[Source], text_field: str) -> None:
    """A text field named for a corpus of text files only would be ignored: refused."""
    if text_field != "text" and all(kind(f) == "text" for s in sources for f in s.files):
        raise ValueError(f"--text_field {text_field!r} names a field of JSON or parquet "
                         "records; these are text files, read whole")


def mix_documents(sources: Sequence[Source], text_field: str = "text", seed: int = 0,
                  dedup: bool = False, progress: Progress = _noop) -> Iterator[Document]:
    """The documents of several sources: in order, or, when any source has a weight
    (``path:0.7``; the others count 1), interleaved at random under ``seed``, each next
    document drawn from a source with probability proportional to its weight until every
    source is used up (a source that runs out leaves the draw). ``dedup`` drops a document
    whose text was seen before (a 16-byte digest per document is kept)."""
    check_text_field(sources, text_field)
    streams = [source_documents(s, text_field, progress) for s in sources]
    if all(s.weight is None for s in sources):
        streams = [itertools.chain.from_iterable(streams)]
    weights = [1.0 if s.weight is None else s.weight for s in sources]
    rng = random.Random(seed)
    seen: set[bytes] = set()
    while streams:
        i = 0 if len(streams) == 1 else rng.choices(range(len(streams)), weights)[0]
        doc = next(streams[i], None)
        if doc is None:
            del streams[i], weights[i]
            continue
        if dedup:
            digest = hashlib.blake2b(doc.text.encode("utf-8", "surrogatepass"),
                                     digest_size=16).digest()
            if digest in seen:
                continue
            seen.add(digest)
        yield doc


def records(path: str | Path) -> Iterator[tuple[dict, str]]:
    """(object, where) of each record of a JSON Lines file (plain, .gz, .zst) or a parquet
    file (a row as a dict), for data sets whose examples are objects (chat conversations);
    where is ``file:line`` or ``file: row N``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if kind(path) == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise DataFileError(f"{path}: not a readable parquet file ({e})") from None
        row = 0
        for group in range(pf.num_row_groups):
            try:
                rows = pf.read_row_group(group).to_pylist()
            except (pa.ArrowException, OSError) as e:
                raise DataFileError(f"{path}: row group {group} (rows from {row}) is corrupt "
                                    f"({e})") from None
            for obj in rows:
                yield obj, f"{path}: row {row}"
                row += 1
        return
    for block in json_blocks(path):
        for i, raw in enumerate(block.data.split(b"\n")):
            if raw.strip():
                where = f"{path}:{block.first_line + i}"
                try:
                    yield json.loads(raw), where
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise DataFileError(f"{where}: not valid JSON ({e})") from None


@dataclass(frozen=True)
class TextFile:
    """A text file as one document: a unit a worker process reads on its own."""

    path: Path

    def documents(self, field: str = "text") -> Iterator[Document]:
        text = read_text(self.path)
        if not text.strip():
            raise DataFileError(f"{self.path}: file is empty")
        yield Document(text, str(self.path), whole_file=True)


def work_units(path: Path, text_field: str = "text",
               progress: Progress = _noop) -> Iterator[JsonBlock | ParquetGroup | TextFile]:
    """A file as units a worker process reads on its own (``documents(field)`` of each, in
    order, gives the file's documents)."""
    k = kind(path)
    if k == "parquet":
        yield from parquet_groups(path, text_field, progress)
    elif k == "json":
        yield from json_blocks(path, progress)
    else:
        progress(path.stat().st_size)
        yield TextFile(path)
