"""Data sets for training: pretraining windows and token shards, classification,
instruction and preference data, token tagging, and the readers' shared checks. Fetching is
``scratchlm.downloads``."""
