"""Torch-side implementations of the built-in components (imported only when used)."""
