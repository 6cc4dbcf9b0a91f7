"""The server's plain-ASGI layers: the body-size limit, the API key gate that also counts
every answer, and what ``/metrics`` reports.

Not here: slow clients (``guard.py``, at the protocol below ASGI).
"""

from __future__ import annotations

import json
import secrets

from starlette.exceptions import HTTPException as StarletteHTTPException


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is read
    whole (by its Content-Length, or by counting a chunked body as it arrives)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_json(send, 413, self._message())
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # answered by the app's handler, as a 413
                    raise StarletteHTTPException(413, self._message()["error"]["message"])
            return message

        await self.app(scope, counted, send)

    def _message(self) -> dict:
        return {"error": {"message": f"the request body is larger than this server's limit of "
                                     f"{self.limit} bytes", "type": "invalid_request_error",
                          "param": None, "code": "request_too_large"}}


class Gate:
    """ASGI middleware: the API key for /v1 routes, and each answer counted for /metrics. Plain
    ASGI (not ``@app.middleware``, whose wrapper hides the client's disconnect): ``receive``
    goes through untouched, so an endpoint can tell that its client left."""

    def __init__(self, app, api_key: str | None, stats: "Stats"):
        self.app, self.api_key, self.stats = app, api_key, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.api_key and (path.startswith("/v1") or path == "/metrics"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                self.stats.answered(path, 401)
                return await _send_json(send, 401, {"error": {
                    "message": "invalid or missing API key (Authorization: Bearer ...)",
                    "type": "authentication_error", "param": None, "code": None}})

        async def counted(message):
            if message["type"] == "http.response.start":
                self.stats.answered(path, message["status"])
            await send(message)

        await self.app(scope, receive, counted)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class Stats:
    """What ``/metrics`` reports (Prometheus text format)."""

    ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/")

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = self.completion_tokens = 0
        self.ttft_sum, self.ttft_count = 0.0, 0
        self.decode_seconds = 0.0
        self.active = 0

    def answered(self, path: str, status: int) -> None:
        route = path if path in self.ROUTES else "other"  # no label per hostile path
        self.requests[route, status] = self.requests.get((route, status), 0) + 1

    def render(self, queue_length: int) -> str:
        lines = ["# HELP scratchlm_requests_total HTTP requests answered, by route and status.",
                 "# TYPE scratchlm_requests_total counter"]
        lines += [f'scratchlm_requests_total{{route="{r}",status="{s}"}} {n}'
                  for (r, s), n in sorted(self.requests.items())]
        rate = self.completion_tokens / self.decode_seconds if self.decode_seconds else 0.0
        for name, kind, value, help_ in (
                ("prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens processed."),
                ("completion_tokens_total", "counter", self.completion_tokens,
                 "Tokens generated."),
                ("active_requests", "gauge", self.active, "Requests being generated now."),
                ("queue_length", "gauge", queue_length, "Requests waiting for the batcher."),
                ("tokens_per_second", "gauge", round(rate, 3),
                 "Generated tokens per second of generation, over all finished requests."),
        ):
            lines += [f"# HELP scratchlm_{name} {help_}", f"# TYPE scratchlm_{name} {kind}",
                      f"scratchlm_{name} {value}"]
        lines += ["# HELP scratchlm_time_to_first_token_seconds From submission to the first "
                  "token.", "# TYPE scratchlm_time_to_first_token_seconds summary",
                  f"scratchlm_time_to_first_token_seconds_sum {self.ttft_sum:.6f}",
                  f"scratchlm_time_to_first_token_seconds_count {self.ttft_count}"]
        return "\n".join(lines) + "\n"


