"""Helpers for tests and demos: tiny checkpoints, golden fixtures. Users never need these."""
