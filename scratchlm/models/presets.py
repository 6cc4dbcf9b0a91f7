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


def every_kth(flags: list[bool], last: bool = False) -> int | None:
    """The k for which ``flags[i]`` holds exactly at every k-th layer ((i + 1) % k == 0, and
    at the last layer too with ``last``), 0 when it holds nowhere (but at the last), None when
    no k gives ``flags``: reading a per-layer list back into an every-k-th setting
    (``sliding_window_pattern``: the global layers; ``full_attention_interval``)."""
    n = len(flags)
    marked = [i for i, f in enumerate(flags) if f]
    k = marked[0] + 1 if marked and not (last and marked[0] == n - 1) else 0
    want = [bool(k and (i + 1) % k == 0) or (last and i == n - 1) for i in range(n)]
    return k if [bool(f) for f in flags] == want else None


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

    def check_attention_shape(self) -> None:
        """What every RoPE family's config checks alike: positive sizes, query heads in whole
        groups per key/value head, and ``head_dim`` (default ``n_embd // n_head``) a positive
        even integer, as RoPE rotates pairs. Errors name the config's field."""
        owner = type(self).__name__
        self.check_positive("vocab_size", "context_length", "n_embd", "n_layer", "n_head",
                            "n_kv_head", "intermediate_size")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"{owner}.n_head ({self.n_head}) must be divisible by "
                             f"n_kv_head ({self.n_kv_head})")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"{owner}.n_embd ({self.n_embd}) must be divisible by "
                                 f"n_head ({self.n_head}) when head_dim is not given")
            self.head_dim = self.n_embd // self.n_head
        if not isinstance(self.head_dim, int) or self.head_dim < 1 or self.head_dim % 2:
            raise ValueError(f"{owner}.head_dim must be a positive even integer (RoPE rotates "
                             f"pairs), got {self.head_dim!r}")
