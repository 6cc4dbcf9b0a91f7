"""Model families (modules only), their presets, and weight loading."""


def load_pretrained(name: str, **kwargs):
    """Load a pretrained model by preset name or path; see ``scratchlm.models.loading``."""
    from scratchlm.models.loading import load_pretrained as _load

    return _load(name, **kwargs)
