"""Recipes: one readable ``main(cfg)`` per job, composed from library pieces."""
