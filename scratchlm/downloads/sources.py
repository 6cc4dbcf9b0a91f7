"""The public data sets scratchlm knows by name, with their addresses and digests.

``fetch("the-verdict")`` returns a local path (cache, mirror or download; see ``download.py``).
Archives are unpacked into the cache; a mirror may hold the unpacked member instead of the
archive (e.g. a bare ``SMSSpamCollection`` rather than the UCI zip).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from scratchlm.downloads.download import (
    DownloadError,
    _check_digest,
    cache_dir,
    default_mirror,
    download,
)

_BOOK = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"
_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/models/124M"
_GSM8K = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"


@dataclass(frozen=True)
class Source:
    url: str
    filename: str  # name in the cache and in a mirror
    sha256: str | None = None  # digest of the downloaded file (None: unknown, not checked)
    member: str | None = None  # for archives: the file inside that we want
    member_sha256: str | None = None


SOURCES: dict[str, Source] = {
    # Edith Wharton, "The Verdict" (1908); the book's chapter 2 corpus.
    "the-verdict": Source(
        f"{_BOOK}/ch02/01_main-chapter-code/the-verdict.txt",
        "the-verdict.txt",
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    ),
    # Karpathy's char-rnn corpus.
    "tinyshakespeare": Source(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "tinyshakespeare.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    # UCI SMS Spam Collection v.1 (CC BY 4.0): label<TAB>text lines.
    "sms-spam": Source(
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        "sms+spam+collection.zip",
        None,
        member="SMSSpamCollection",
        member_sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
    ),
    # The book's chapter 7 Alpaca-style instruction data (1,100 entries).
    "instruction-data": Source(
        f"{_BOOK}/ch07/01_main-chapter-code/instruction-data.json",
        "instruction-data.json",
        "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
    ),
    # The same entries with chosen/rejected answers, for DPO.
    "instruction-data-with-preference": Source(
        f"{_BOOK}/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
        "instruction-data-with-preference.json",
        "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
    ),
    # OpenAI's GPT-2 byte-level BPE files (MIT).
    "gpt2-encoder": Source(
        f"{_GPT2}/encoder.json",
        "gpt2/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    # GSM8K grade-school math (MIT, OpenAI): {"question", "answer"} lines, answers end "#### N".
    "gsm8k-train": Source(
        f"{_GSM8K}/train.jsonl",
        "gsm8k/train.jsonl",
        "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    ),
    "gsm8k-test": Source(
        f"{_GSM8K}/test.jsonl",
        "gsm8k/test.jsonl",
        "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    ),
    "gpt2-vocab": Source(
        f"{_GPT2}/vocab.bpe",
        "gpt2/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}


def fetch(name: str, *, progress: bool = True) -> Path:
    """Local path of the registered data set ``name`` (its member, for archives)."""
    try:
        src = SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(SOURCES))}") from None
    if src.member is None:
        return download(src.url, src.filename, src.sha256, progress=progress)

    dest = cache_dir() / src.member
    if dest.is_file():
        try:
            _check_digest(dest, src.member_sha256, str(dest))
            return dest
        except DownloadError:
            dest.unlink()
    mirror = default_mirror()
    if mirror and not mirror.startswith(("http://", "https://", "file:")):
        bare = Path(mirror).expanduser() / src.member
        if bare.is_file():
            _check_digest(bare, src.member_sha256, str(bare))
            return bare
    try:
        archive = download(src.url, src.filename, src.sha256, progress=progress)
    except DownloadError as e:  # say that the unpacked member would do as well
        raise DownloadError(f"{e}\nA mirror folder may hold the unpacked {src.member!r} "
                            f"instead of {src.filename!r}.") from None
    with zipfile.ZipFile(archive) as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        if src.member not in names:
            raise DownloadError(f"{archive} does not contain {src.member}")
        tmp = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(names[src.member]) as fin, open(tmp, "wb") as fout:
            fout.write(fin.read())
    try:
        _check_digest(tmp, src.member_sha256, f"{src.member} in {archive}")
    except DownloadError:
        tmp.unlink()
        raise
    tmp.replace(dest)
    return dest
