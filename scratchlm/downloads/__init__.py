"""Downloads: files fetched into the cache (resumable, verified, never outside their folder),
and the public data sets and vocabularies by name (``sources.py``). Below everything that reads
what it fetches (tokenizers, data, checkpoints)."""
