"""Tool calls in chat text: how a conversation with tools is shown to a model, and how the calls
a model writes are read back. One table of formats, by family:

    hermes  <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>   Qwen 2.5 / 3, Hermes,
            SmolLM3; and the format for every template that knows no tools (SmolLM2, ...)
    llama3  {"name": "f", "parameters": {...}}   the whole reply: Llama 3.1 - 3.3

A template that renders tools itself (it reads the Jinja ``tools`` variable and one of a
format's markers) gets the OpenAI tools and messages as Hugging Face's ``apply_chat_template``
passes them. A template that knows no tools gets them the way Qwen 2.5's template writes them:
a system-prompt section listing the tools, earlier calls as ``<tool_call>`` text in the
assistant's turn, and tool results as ``<tool_response>`` text in a user turn. Everything added
is message content, so it stays ordinary text (no user text becomes a control token).

``ToolCallParser`` reads a reply as it streams: text, and calls to the declared tools; what
looks like a call but does not parse, or names a tool that was not declared, stays text.

Not here: constraining a reply to calls (``serve/tools.py`` builds that grammar).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from scratchlm.tokenizers.base import held_back


@dataclass(frozen=True)
class ToolFormat:
    name: str
    markers: tuple[str, ...]  # a template holding one of these writes tools in this format
    open: str  # a call begins ("": the reply is the call)
    close: str  # ... and ends
    arguments_key: str  # the key the arguments sit under

    def call_text(self, name: str, arguments) -> str:
        """How the model writes one call (``arguments``: an object, or its JSON text)."""
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        body = json.dumps({"name": name, self.arguments_key: arguments}, ensure_ascii=False)
        return f"{self.open}{body}{self.close}"


HERMES = ToolFormat("hermes", ("<tool_call>",), "<tool_call>\n", "\n</tool_call>", "arguments")
LLAMA3 = ToolFormat("llama3", ('"parameters": dictionary of argument name',), "", "",
                    "parameters")
FORMATS = (HERMES, LLAMA3)

PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>')


def tool_format(template: str | None) -> tuple[ToolFormat, bool]:
    """The format a template's model writes calls in, and whether the template renders tools
    itself (else the generic Hermes rendering here does)."""
    if template and "tools" in template:
        for fmt in FORMATS:
            if any(m in template for m in fmt.markers):
                return fmt, True
    return HERMES, False


def with_tools(messages: list[dict], tools: list[dict], template: str | None
               ) -> tuple[list[dict], list[dict] | None]:
    """(messages, the template's ``tools`` variable) for a conversation with ``tools``
    (OpenAI's ``[{"type": "function", "function": {...}}]``). Messages are template dicts:
    a call's arguments an object (``Message.template_dict``)."""
    fmt, native = tool_format(template)
    if native:
        return messages, tools or None
    out: list[dict] = []
    if tools:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        section = PREAMBLE.format(tools=listed)
        if messages and messages[0]["role"] == "system":
            first = messages[0]
            out.append({"role": "system", "content": f"{first['content'] or ''}\n\n{section}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": section})
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(fmt.call_text(c["function"]["name"], c["function"]["arguments"])
                              for c in m["tool_calls"])
            text = f"{m['content']}\n{calls}" if m.get("content") else calls
            out.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content'] or ''}\n"
                                                   "</tool_response>"})
        else:
            out.append({"role": m["role"], "content": m["content"] or ""})
    return out, None


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object


class ToolCallParser:
    """``push(text)`` -> the new pieces of a streaming reply: text (str) and calls
    (``ParsedCall``); ``finish()`` -> what was held back. Text that may begin a call is held
    until it is known."""

    def __init__(self, fmt: ToolFormat, names: set[str]):
        self.fmt, self.names = fmt, names
        self.open, self.close = fmt.open.strip(), fmt.close.strip()
        self.buf = ""
        self.in_call = False
        self.whole = not self.open  # the reply is a call, or text: decided by its first char
        self.mode: str | None = None  # whole replies: "text" or "call"
        self.calls = 0

    def push(self, piece: str) -> list[str | ParsedCall]:
        self.buf += piece
        return self._whole(final=False) if self.whole else self._tagged(final=False)

    def finish(self) -> list[str | ParsedCall]:
        out = self._whole(final=True) if self.whole else self._tagged(final=True)
        self.buf = ""
        return out

    def _tagged(self, final: bool) -> list[str | ParsedCall]:
        out: list[str | ParsedCall] = []
        while True:
            if not self.in_call:
                at = self.buf.find(self.open)
                if at < 0:
                    keep = 0 if final else held_back(self.buf, self.open)
                    out.append(self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    break
                out.append(self.buf[:at])
                self.buf = self.buf[at + len(self.open):]
                self.in_call = True
            else:
                ends, at = [], self.buf.find(self.close)
                while at >= 0:
                    ends.append(at)
                    at = self.buf.find(self.close, at + 1)
                # the first close marker after which the body parses ends the call: one inside
                # the call's JSON (an argument holding "</tool_call>") does not
                end = next((e for e in ends if self._call(self.buf[:e], count=False)), None)
                if end is None:
                    if not ends:
                        if final:  # a call cut short (a stop, the length): a call if it parses
                            out.append(self._call(self.buf) or self.open + self.buf)
                            self.buf = ""
                        break
                    if not final and not self._hopeless(self.buf[:ends[0]]):
                        break  # a later close marker may complete it
                    end = ends[0]  # not a call: text up to the first close marker
                body, self.buf = self.buf[:end], self.buf[end + len(self.close):]
                self.in_call = False
                out.append(self._call(body) or self.open + body + self.close)
        return [p for p in out if p != ""]

    def _whole(self, final: bool) -> list[str | ParsedCall]:
        if self.mode is None:
            start = self.buf.lstrip()
            if not start and not final:
                return []
            self.mode = "call" if start.startswith("{") else "text"
        if self.mode == "text":
            out, self.buf = self.buf, ""
            return [out] if out else []
        if not final:
            return []
        calls, pos, decoder = [], 0, json.JSONDecoder()
        text = self.buf
        while pos < len(text):  # calls one after another, "; " between them
            while pos < len(text) and text[pos] in " \t\n;":
                pos += 1
            if pos == len(text):
                break
            try:
                obj, end = decoder.raw_decode(text, pos)
            except ValueError:
                return [text]
            call = self._call(text[pos:end])
            if call is None:
                return [text]
            calls.append(call)
            pos = end
        return calls or ([text] if text else [])

    @staticmethod
    def _hopeless(body: str) -> bool:
        """A body that no more text can turn into a call (not JSON from its first character)."""
        return not body.lstrip().startswith("{")

    def _call(self, body: str, count: bool = True) -> ParsedCall | None:
        try:
            obj = json.loads(body.strip())
        except ValueError:
            return None
        if not isinstance(obj, dict) or obj.get("name") not in self.names:
            return None
        args = obj.get(self.fmt.arguments_key, obj.get("arguments", {}))
        if isinstance(args, str):  # some models write the arguments as JSON text
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        self.calls += count
        return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))

