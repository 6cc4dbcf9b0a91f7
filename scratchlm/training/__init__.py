"""The shared training core used by every recipe."""
