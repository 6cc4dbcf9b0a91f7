"""A client that disconnects from a non-streaming request cancels its generation: its batch row
is freed at once (the old behaviour kept generating to the end, and the next request waited)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest


def metrics(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("scratchlm_") and "{" not in line}


@pytest.fixture(scope="module")
def long_server(tiny_chat_model):
    model = tiny_chat_model(context_length=4096)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "scratchlm", "serve", "--model", str(model),
                             "--port", str(port), "--max-tokens-cap", "4000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1)
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read())
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


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
