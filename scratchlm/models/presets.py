"""Looking up a family's presets: one function every config's ``from_name`` calls."""

from __future__ import annotations

from dataclasses import replace


def from_preset(presets: dict, name: str, kind: str, **overrides):
    """A copy of ``presets[name]`` with ``overrides`` (checked by the config's own validation);
    an unknown name is an error listing the ``kind`` presets there are."""
    try:
        base = presets[name]
    except KeyError:
        raise ValueError(f"unknown {kind} preset {name!r}; known: {', '.join(presets)}") from None
    return replace(base, **overrides)
