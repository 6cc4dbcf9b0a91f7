"""The judge clients over real HTTP on 127.0.0.1: a stdlib server speaking Ollama's /api/chat
(streamed NDJSON, as Ollama answers) and one speaking OpenAI's /v1/chat/completions (with a
transient failure to retry and a required key)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scratchlm.evaluate.judge import (
    JudgeError,
    OllamaClient,
    OpenAIClient,
    judge_prompt,
    parse_score,
    score_responses,
)
from scratchlm.evaluate.offline import contains_reference, exact_match, text_metrics


def judge_answer(prompt: str) -> str:
    """A rule the fake judge follows: responses equal to the reference get 90, others 20, and
    responses containing 'gibberish' get an unparsable answer."""
    ref = prompt.split("correct output `")[1].split("`")[0]
    resp = prompt.split("score the model response `")[1].split("`")[0]
    if "gibberish" in resp:
        return "I cannot score this."
    return "Score: 90/100" if resp == ref else "20"


class Handler(BaseHTTPRequestHandler):
    calls: list = []
    fail_first = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.calls.append((self.path, dict(self.headers), body))
        if Handler.fail_first > 0:
            Handler.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        text = judge_answer(body["messages"][0]["content"])
        if self.path == "/api/chat":
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            for i in range(0, len(text), 3):  # streamed in pieces, one JSON per line
                line = {"model": body["model"], "message": {"role": "assistant",
                                                            "content": text[i:i + 3]}, "done": False}
                self.wfile.write((json.dumps(line) + "\n").encode())
            self.wfile.write((json.dumps({"done": True}) + "\n").encode())
        elif self.path == "/v1/chat/completions":
            if self.headers.get("Authorization") != "Bearer sekret":
                self.send_response(401)
                self.end_headers()
                return
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(out.encode())
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture()
def server():
    Handler.calls, Handler.fail_first = [], 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


ITEMS = [{"prompt": "Rewrite: hi", "reference": "Hello.", "response": "Hello."},
         {"prompt": "Capital of France?", "reference": "Paris.", "response": "London."},
         {"prompt": "Say x", "reference": "x", "response": "gibberish"}]


def test_parse_score():
    assert parse_score("85") == 85
    assert parse_score("Score: **90**/100") == 90
    assert parse_score("I'd say 100.") == 100
    assert parse_score("7.5") is None  # not an integer score
    assert parse_score("none") is None and parse_score("250") is None


def test_ollama_wire_format(server):
    result = score_responses(ITEMS, OllamaClient(url=server).chat, concurrency=2, progress=False)
    assert result.scores == [90, 20, None] and result.unparsable == 1
    assert result.average == 55
    path, _, body = Handler.calls[0]
    assert path == "/api/chat" and body["model"] == "llama3"
    assert body["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048}


def test_openai_compatible_with_key_and_retry(server):
    Handler.fail_first = 2  # two 503s, then answers
    client = OpenAIClient(model="judge", base_url=f"{server}/v1", api_key="sekret", backoff=0.01)
    result = score_responses(ITEMS[:2], client.chat, concurrency=1, progress=False)
    assert result.scores == [90, 20]
    assert len(Handler.calls) == 4


def test_openai_errors_are_reported_not_fatal(server):
    client = OpenAIClient(model="judge", base_url=f"{server}/v1", api_key="wrong", backoff=0.01)
    with pytest.raises(JudgeError, match="HTTP 401"):
        client.chat([{"role": "user", "content": judge_prompt("a", "b", "c")}])
    result = score_responses(ITEMS[:1], client.chat, progress=False)
    assert result.scores == [None] and result.answers[0].startswith("error:")
    dead = OllamaClient(url="http://127.0.0.1:9", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(JudgeError, match="after 2 attempts"):
        dead.chat([{"role": "user", "content": "hi"}])


def test_offline_metrics():
    assert exact_match("Paris.", "paris") and not exact_match("Paris is it", "Paris")
    assert contains_reference("The answer is Paris!", "paris.")
    assert text_metrics(["Paris.", "It is Rome", "x"], ["Paris", "Rome", "y"]) == \
        pytest.approx({"exact_match": 1 / 3, "contains_reference": 2 / 3,
                       "reference_f1": (1 + 0.5 + 0) / 3})


def test_closer_to_chosen():
    from scratchlm.evaluate.offline import closer_to_chosen, token_f1

    assert token_f1("the cat sat", "The cat sat.") == 1.0 and token_f1("a", "b") == 0.0
    share = closer_to_chosen(["Thank you, the answer is 4.", "Get lost, it is 4.", "4"],
                             ["Thank you, the answer is 4.", "The answer is 4, thanks.", "4!"],
                             ["Ugh, it's 4.", "Get lost, it is 4 obviously.", "4"])
    assert share == pytest.approx((1 + 0 + 0.5) / 3)


def test_judge_cli_on_a_responses_file(server, tmp_path):
    """``scratchlm evaluate judge`` on the book's file layout (instruction/input/output)."""
    import subprocess
    import sys

    rows = [{"instruction": "Say hi", "input": "", "output": "Hello.", "model_response": "Hello."},
            {"instruction": "Add", "input": "2+2", "output": "4", "model_response": "gibberish"}]
    path = tmp_path / "test-with-responses.json"
    path.write_text(json.dumps(rows))
    r = subprocess.run([sys.executable, "-m", "scratchlm", "evaluate", "judge", str(path),
                        "--url", server], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    scores = json.loads((tmp_path / "test-with-responses-scores.json").read_text())
    assert [s["score"] for s in scores["per_item"]] == [90, None] and scores["average"] == 90
    assert "average score 90.00 over 1 of 2 items (1 unparsable, 0 failed requests)" in r.stdout
    prompt = Handler.calls[1][2]["messages"][0]["content"]
    assert "### Input:\n2+2" in prompt or "### Input:\n2+2" in Handler.calls[0][2]["messages"][0]["content"]


def test_an_unreachable_judge_is_said_before_any_work(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"instruction": "Say hi", "output": "Hello.",
                                 "model_response": "Hello."}] * 4))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "scratchlm", "evaluate", "judge", str(path),
                        "--url", f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert f"cannot reach the judge at http://127.0.0.1:{port}/api/tags" in r.stderr
    assert "ollama serve" in r.stderr and "judging" not in r.stderr
    assert not (tmp_path / "r-scores.json").exists() and time.perf_counter() - t0 < 60
