"""Small tokenizers built locally, for tests and plugin authors' tests (see :mod:`dva.components.tokenizers`)."""

from dva.components.tokenizers import WORDS, tiny_tokenizer

__all__ = ["WORDS", "tiny_tokenizer"]
