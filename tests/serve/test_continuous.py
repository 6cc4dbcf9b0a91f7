"""Long requests on a real server: a short request that arrives while a long one decodes joins
the running batch and finishes long before it (continuous batching; before, it waited for the
whole long generation), and a client that disconnects from a non-streaming request cancels its
generation at once (before, it kept generating to the end and the next request waited)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from conftest import serve_subprocess


def metrics(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("scratchlm_") and "{" not in line}


@pytest.fixture(scope="module")
def long_server(tiny_chat_model):
    model = tiny_chat_model(context_length=4096)
    with serve_subprocess("--model", str(model), "--max-tokens-cap", "4000") as base:
        yield base


def test_a_non_streaming_client_that_leaves_cancels_its_generation(long_server):
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 1.0,
                       "seed": 1}).encode()
    host, port = long_server.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.time() + 10
    while metrics(long_server)["scratchlm_active_requests"] == 0:  # it started generating
        assert time.time() < deadline
        time.sleep(0.05)
    s.close()  # the client leaves
    left = time.time()
    while metrics(long_server)["scratchlm_active_requests"] > 0:
        assert time.time() - left < 3, "the generation went on after the client left"
        time.sleep(0.05)
    assert metrics(long_server)["scratchlm_completion_tokens_total"] < 4000


def test_a_short_request_joins_while_a_long_one_decodes(long_server):
    import threading

    from openai import OpenAI

    client = OpenAI(base_url=f"{long_server}/v1", api_key="none")
    name = json.loads(urllib.request.urlopen(f"{long_server}/health", timeout=5).read())["model"]
    long_done = threading.Event()
    got = []

    def long_one():
        stream = client.completions.create(model=name, prompt="Once upon a time", max_tokens=3000,
                                           temperature=1.0, seed=2, stream=True)
        for chunk in stream:
            got.append(chunk)
        long_done.set()

    thread = threading.Thread(target=long_one, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while len(got) < 5:  # the long one is decoding
        assert time.time() < deadline
        time.sleep(0.02)
    t0 = time.time()
    short = client.completions.create(model=name, prompt="Hi", max_tokens=5, temperature=0)
    took = time.time() - t0
    assert short.usage.completion_tokens == 5
    assert not long_done.is_set(), "the long request ended first: the test shows nothing"
    assert took < 2
    health = json.loads(urllib.request.urlopen(f"{long_server}/health", timeout=5).read())
    assert health["largest_batch"] >= 2  # they shared decode steps
    thread.join(timeout=120)
