"""Generation, ids in and ids out: pure sampling functions and the naive reference
``generate`` (``sampling.py``), the KV-cache engine and its one text-streaming class
(``engine.py``), continuous batching (``slots.py``, ``batcher.py``), the native decoder."""
