"""Small tokenizers built locally, so tests never touch a model hub.

A BERT WordPiece tokenizer from a written ``vocab.txt``, and a CLIP byte-level BPE tokenizer whose
vocabulary is single characters (no merges): both are the real tokenizer classes, only tiny.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

WORDS = (
    "normal chest x ray scan lung opacity covid 19 viral pneumonia cardiomegaly healthy left right upper "
    "lower zone top bottom of the on in a an with heart effusion brain mri"
).split()


def tiny_tokenizer(family: str, max_length: int = 77) -> Any:
    """A tiny tokenizer of the family ("bert" or "clip") with ``model_max_length`` set.

    Built by writing the vocabulary files and loading them with ``from_pretrained``, the one
    constructor path that transformers 4 and 5 share.
    """
    import transformers

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if family == "bert":
            vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase + string.digits)
            vocab += ["##" + c for c in string.ascii_lowercase + string.digits] + list(".,-") + WORDS
            (root / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
            tokenizer = transformers.BertTokenizerFast.from_pretrained(folder, model_max_length=max_length)
        elif family == "clip":
            vocab = ["<|startoftext|>", "<|endoftext|>"]
            for char in string.ascii_lowercase + string.digits + ".,-!":
                vocab += [char, char + "</w>"]
            (root / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
            (root / "merges.txt").write_text("#version: 0.2\n")
            tokenizer = transformers.CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)
        else:
            raise ValueError(f"no tiny tokenizer for family {family!r}")
    return tokenizer
