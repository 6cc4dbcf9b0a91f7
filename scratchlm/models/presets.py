"""What every family's config dataclass shares: looking up its presets (``from_preset``, which
each config's ``from_name`` calls with its own table) and ``FamilyConfig``, the members that are
the same in all of them. Each family's fields and rules stay in its own file."""

from __future__ import annotations

from dataclasses import asdict, replace


def from_preset(presets: dict, name: str, kind: str, **overrides):
    """A copy of ``presets[name]`` with ``overrides`` (checked by the config's own validation);
    an unknown name is an error listing the ``kind`` presets there are."""
    try:
        base = presets[name]
    except KeyError:
        raise ValueError(f"unknown {kind} preset {name!r}; known: {', '.join(presets)}") from None
    return replace(base, **overrides)


class FamilyConfig:
    """Mixed into every family's config dataclass; it adds no fields."""

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the head: the vocabulary (GPT pads it, see GPTConfig)."""
        return self.vocab_size

    def to_dict(self) -> dict:
        """The fields as plain data: what a checkpoint's config.json holds."""
        return asdict(self)

    def check_positive(self, *names: str) -> None:
        """``ValueError`` naming the first of the fields ``names`` that is not an integer >= 1."""
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, "
                                 f"got {value!r}")
