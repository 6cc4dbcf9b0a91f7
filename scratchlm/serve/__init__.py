"""Serving: the OpenAI-compatible HTTP server and its web chat page."""
