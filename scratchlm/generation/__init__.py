"""Generation: pure sampling functions and the naive reference ``generate``."""
