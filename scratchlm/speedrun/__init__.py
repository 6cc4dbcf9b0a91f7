"""``scratchlm speedrun``: every recipe in turn, from a corpus to a chat model (``run.py``),
and its report card (``report.py``). Like the demo, it sits above the recipes it composes."""
