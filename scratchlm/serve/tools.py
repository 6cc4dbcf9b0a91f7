"""What a chat request's ``tools``, ``tool_choice`` and ``response_format`` ask of its
generation, decided once per request:

    tool_choice  response_format    the prompt shows   the tokens follow        the reply is read as
    none / -     text / -           no tools           anything                 text
    auto         text / -           the tools          anything                 text and calls
    required     any                the tools          one call or more         calls
    {function}   any                the tools          calls to that function   calls
    auto         json_*             the tools          a call, or the JSON      text and calls

A constrained reply holds one call unless ``parallel_tool_calls`` is true; an unconstrained one
(``auto``) may hold several.
    none / -     json_*             no tools           the JSON                 text

The grammar is Lark text for ``generation/grammar.py`` (llguidance): a call is the family's
format (``tokenizers/tool_calls.py``) around a JSON object whose ``name`` is a declared tool's
and whose arguments follow its ``parameters`` schema. A marker the tokenizer holds as one special
token (Qwen's ``<tool_call>``) is matched as that token. A ``strict`` schema may use only the
keywords the engine enforces (else a 400 naming it); a non-strict one leaves the others
unenforced, as OpenAI's non-strict mode does not promise them either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from scratchlm.generation.grammar import Grammar, GrammarError, json_rule, lark_literal
from scratchlm.serve.schema import APIError, ChatRequest, NamedTool
from scratchlm.tokenizers.tool_calls import ToolCallParser, ToolFormat, tool_format


@dataclass
class Plan:
    tools: list[dict] | None  # the tools the prompt shows (OpenAI's shape)
    lark: str | None  # the grammar the reply follows
    names: set[str] | None  # parse the reply for calls to these (None: it is text)
    fmt: ToolFormat

    single: bool = False  # parallel_tool_calls false: the first call only

    def parser(self) -> ToolCallParser | None:
        return ToolCallParser(self.fmt, self.names) if self.names is not None else None

    def grammar(self, llm) -> Grammar | None:
        """The compiled grammar (run it off the event loop: it reads the whole schema)."""
        if self.lark is None:
            return None
        try:
            return Grammar(llm.tokenizer, llm.model.cfg.vocab_size, llm.stop_ids, self.lark)
        except GrammarError as e:
            raise APIError(400, f"the schema cannot be enforced: {e}",
                           "tools" if self.names else "response_format") from None


def plan(req: ChatRequest, tokenizer) -> Plan:
    _consistent(req)
    fmt, _ = tool_format(getattr(tokenizer, "chat_template", None))
    choice = req.tool_choice or ("auto" if req.tools else "none")
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []] if choice != "none" else []
    _no_controls(tools, req, tokenizer)
    json_item = _response_json(req)
    if not tools:
        return Plan(None, f"start: {json_item}" if json_item else None, None, fmt)
    names = {t["function"]["name"] for t in tools}
    if isinstance(choice, NamedTool):
        forced = [t for t in tools if t["function"]["name"] == choice.function.name]
    else:
        forced = tools if choice == "required" else None
    single = req.parallel_tool_calls is False
    if forced is None and json_item is None:
        return Plan(tools, None, names, fmt, single)
    # one call unless the client asks for more: a small model, once free to go on, repeats its
    # call until max_tokens (llama.cpp's server defaults to one as well)
    calls = _calls_rule(fmt, forced or tools, req.parallel_tool_calls is True, tokenizer)
    start = "start: calls" if forced else f"start: calls | {json_item}"
    return Plan(tools, f"{start}\n{calls}", names, fmt, single)


def _consistent(req: ChatRequest) -> None:
    """The fields that depend on each other."""
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    if req.tool_choice not in (None, "none") and not req.tools:
        raise APIError(400, "tool_choice needs tools", "tool_choice")
    if isinstance(req.tool_choice, NamedTool) and req.tool_choice.function.name not in {
            t.function.name for t in req.tools}:
        raise APIError(400, f"tool_choice names {req.tool_choice.function.name!r}, which is not "
                            "one of the tools", "tool_choice")


def _response_json(req: ChatRequest) -> str | None:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return json_rule({"type": "object"})
    schema = rf.json_schema.schema_ or {"type": "object"}
    return json_rule(schema, strict=bool(rf.json_schema.strict))


def _calls_rule(fmt: ToolFormat, tools: list[dict], parallel: bool, tokenizer) -> str:
    bodies = []
    for t in tools:
        f = t["function"]
        schema = {"type": "object", "properties": {
            "name": {"const": f["name"]},
            fmt.arguments_key: f.get("parameters") or {"type": "object"}},
            "required": ["name", fmt.arguments_key], "additionalProperties": False}
        bodies.append(json_rule(schema, strict=bool(f.get("strict"))))
    sep = "\n" if fmt.open else "; "
    return "\n".join([
        f"calls: call ({lark_literal(sep)} call)*" if parallel else "calls: call",
        "call: " + " ".join(p for p in (_literal(fmt.open, tokenizer), "body",
                                        _literal(fmt.close, tokenizer)) if p),
        "body: " + " | ".join(bodies)])


def _literal(text: str, tokenizer) -> str:
    """``text`` in Lark: a marker the tokenizer holds as one special token is that token."""
    if not text:
        return ""
    marker = text.strip()
    special = getattr(tokenizer, "special_tokens", {})
    if marker and marker in special:
        head, _, tail = text.partition(marker)
        parts = [lark_literal(head) if head else "", f"<[{special[marker]}]>",
                 lark_literal(tail) if tail else ""]
        return " ".join(p for p in parts if p)
    return lark_literal(text)


def _no_controls(tools: list[dict], req: ChatRequest, tokenizer) -> None:
    """Tool definitions, earlier calls and messages' ``name`` / ``tool_call_id`` are the
    client's text: a special-token string in them would reach a template that renders them
    unprotected (only message contents are protected spans)."""
    special = getattr(tokenizer, "special_tokens", {})
    said = [[c.model_dump() for c in m.tool_calls or []] + [m.name, m.tool_call_id]
            for m in req.messages if m.tool_calls or m.name or m.tool_call_id]
    for field, value in (("tools", tools), ("messages", said)):
        if not value or not special:
            continue
        text = json.dumps(value, ensure_ascii=False)
        found = next((s for s in special if s in text), None)
        if found:
            raise APIError(400, f"{field} hold the special token {found!r}; it may not appear "
                                "in tool definitions or calls", field)
