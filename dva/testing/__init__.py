"""Helpers for tests and plugin authors: tiny models built from configs, no network."""
