"""Test setup: downloads never leave the machine.

The cache is a fresh temporary folder, and the mirror is ``../shared/data`` beside the checkout
when it exists (the public data sets, pre-fetched), unless SCRATCHLM_MIRROR is already set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    if not os.environ.get("SCRATCHLM_MIRROR") and SHARED_DATA.is_dir():
        os.environ["SCRATCHLM_MIRROR"] = str(SHARED_DATA)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    os.environ["SCRATCHLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def gpt2_tok():
    from scratchlm.tokenizers import get_tokenizer

    return get_tokenizer("gpt2")


@pytest.fixture(scope="session")
def gpt2_scratch():
    from scratchlm.tokenizers import get_tokenizer

    return get_tokenizer("gpt2-scratch")


@pytest.fixture(scope="session")
def verdict_text():
    from scratchlm.data.sources import fetch

    return fetch("the-verdict").read_text(encoding="utf-8")
