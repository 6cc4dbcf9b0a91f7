"""Shared building blocks: attention variants, norms, feed-forward layers."""
