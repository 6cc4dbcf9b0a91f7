"""One request must not harm another, round two, on a real server (``scratchlm serve`` in a
subprocess): sampling settings at the edge of what validation admits, long stop strings, fields
the server does not implement, slow clients, a body just under the limit, an empty API key."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import serve_subprocess


@pytest.fixture(scope="module")
def server(tiny_chat_model):
    model = tiny_chat_model(context_length=256)
    with serve_subprocess("--model", str(model), "--max-tokens-cap", "64",
                          "--request_timeout", "2", "--max_connections", "40") as base:
        yield base


def post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health_seconds(base: str) -> float:
    t0 = time.perf_counter()
    assert json.loads(urllib.request.urlopen(f"{base}/health", timeout=10).read())["status"] == "ok"
    return time.perf_counter() - t0


PROMPT = {"prompt": "Once upon a time", "max_tokens": 24}


@pytest.mark.parametrize("edge", [{"temperature": 1e-300}, {"temperature": 5e-39},
                                  {"temperature": 1.0, "top_p": 1e-46},
                                  {"temperature": 2.0, "top_p": 1e-300, "top_k": 1}])
def test_edge_sampling_values_answer_and_harm_no_other_request(server, edge):
    """Before, these gave a token id outside the vocabulary: every running request got an
    error and the concurrent ones a 500."""
    results = {}

    def steady():
        results["steady"] = post(f"{server}/v1/completions", {**PROMPT, "seed": 3,
                                                              "temperature": 0.7})

    t = threading.Thread(target=steady)
    t.start()
    status, body = post(f"{server}/v1/completions", {**PROMPT, **edge, "seed": 1})
    t.join()
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert results["steady"][0] == 200, results["steady"][1]
    greedy = post(f"{server}/v1/completions", {**PROMPT, "temperature": 0})[1]
    assert body["choices"][0]["text"] == greedy["choices"][0]["text"]  # the limit is greedy


@pytest.mark.parametrize("field, value", [("logprobs", "yes please"), ("top_logprobs", 21),
                                          ("logit_bias", {"x42": 5}), ("tools", [{"x": 1}]),
                                          ("presence_penalty", 2.5), ("made_up_field", 1),
                                          ("functions", [{"name": "f"}]),
                                          ("response_format", {"type": "xml"})])
def test_fields_out_of_range_or_unknown_are_refused_not_ignored(server, field, value):
    status, body = post(f"{server}/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                         field: value})
    assert status == 400 and body["error"]["param"].split(".")[0] == field, body


@pytest.mark.parametrize("field, value", [("echo", True), ("best_of", 2), ("suffix", "x"),
                                          ("tools", [{"type": "function",
                                                      "function": {"name": "f"}}])])
def test_completion_fields_not_implemented_are_refused(server, field, value):
    status, body = post(f"{server}/v1/completions", {**PROMPT, field: value})
    assert status == 400 and body["error"]["param"] == field, body


def test_fields_left_at_their_do_nothing_values_pass(server):
    status, body = post(f"{server}/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                         "logprobs": False, "logit_bias": {}, "presence_penalty": 0.0,
                         "frequency_penalty": 0, "tools": None})
    assert status == 200, body


def test_stop_strings_are_bounded(server):
    ok = post(f"{server}/v1/completions", {**PROMPT, "stop": ["\u2603" * 1000] * 4})
    assert ok[0] == 200
    status, body = post(f"{server}/v1/completions", {**PROMPT, "stop": ["x" * 1001]})
    assert status == 400 and body["error"]["param"] == "stop"


def test_a_prompt_just_under_the_body_limit_does_not_stall_health(server):
    """A 3.9 MB prompt is tokenized outside the event loop with the GIL let go (before: /health
    waited ~2.4 s for it); it is then refused as longer than the context."""
    got = {}
    body = {"prompt": "Hello world, this is a long prompt. " * 108_000, "max_tokens": 1}
    t = threading.Thread(target=lambda: got.update(r=post(f"{server}/v1/completions", body)))
    t.start()
    worst = 0.0
    while t.is_alive():
        worst = max(worst, health_seconds(server))
        time.sleep(0.02)
    t.join()
    assert got["r"][0] == 400 and got["r"][1]["error"]["param"] == "prompt"
    assert worst < 0.5, f"/health took {worst:.2f} s while the big prompt was tokenized"


def test_slow_clients_are_closed_and_cannot_crowd_out_health(server):
    host, port = server.removeprefix("http://").split(":")
    slow = []
    for _ in range(60):  # over --max_connections 40: the slowest waiting ones are closed
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        slow.append(s)
    assert health_seconds(server) < 1
    time.sleep(3)  # past --request_timeout 2
    for s in slow:
        s.settimeout(5)
        try:
            assert s.recv(100) == b""  # closed by the server
        except ConnectionResetError:
            pass
        s.close()
    assert health_seconds(server) < 1


@pytest.mark.parametrize("env, args", [({}, ["--api-key", ""]),
                                       ({"SCRATCHLM_API_KEY": ""}, [])])
def test_an_empty_api_key_is_refused_not_an_open_server(env, args):
    out = subprocess.run([sys.executable, "-m", "scratchlm", "serve", "--model", "none", *args],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 2 and "is empty" in out.stderr


def test_a_pipelined_request_that_stalls_is_closed_too(server):
    """A whole request and the headers of a second (whose body never comes) in one write: the
    second is read from the buffer when the first response ends, not by a new read, and must
    get its deadline there."""
    host, port = server.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
              b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000000\r\n\r\n")
    s.settimeout(10)
    t0, data = time.perf_counter(), b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    assert b'"status":"ok"' in data.replace(b" ", b"")  # the first request was answered
    assert time.perf_counter() - t0 < 8, "the stalled second request was never closed"
