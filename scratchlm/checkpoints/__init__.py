"""Checkpoints: what a model name is, and reading and writing weights in every layout.

    names.py              resolve(name): embedded GGUF, a .gguf file, a hub preset, a folder
    files.py              safe reading of JSON, safetensors files and shard indexes
    build.py              a model built on the meta device and filled, keys and shapes checked
    ours.py  hf.py  gguf.py   one module per format
    hub.py                fetch a Hugging Face repository (through downloads/download.py)
    delta.py              a run's final/ holding only what it trained over its base
    generation_config.py  the sampling defaults a model ships with
    gguf_tokenizer.py     the tokenizer a GGUF file carries
    load.py               load_pretrained / load_model_and_tokenizer: a model for use

Above ``models`` (the modules they fill), beside ``data`` and ``tokenizers``.
"""


def load_pretrained(name: str, **kwargs):
    """Load a pretrained model by preset name or path; see ``scratchlm.checkpoints.load``."""
    from scratchlm.checkpoints.load import load_pretrained as _load

    return _load(name, **kwargs)
