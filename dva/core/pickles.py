"""Pickled weights files that torch refuses, as one sentence.

dva loads weights as safetensors, or through ``torch.load(weights_only=True)`` (the default from torch
2.6 on, which dva requires; transformers, diffusers and accelerate use it too), which unpickles plain
tensors only. A ``.bin``/``.pt`` file that is a pickle importing anything else (``os.system``, a class
of some training script) or that is no pickle torch knows is refused. torch's message then advises
``weights_only=False``: that would run whatever the file carries, so dva never passes it and never
shows that advice; :func:`refused_pickle` says instead which file was refused and what to do.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator

from dva.core.errors import ConfigError

WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


class RefusedPickle(ConfigError):
    """A weights file torch refused to unpickle; its cause (torch's advice) is never shown, not even with --debug."""

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _loaded_file(error: BaseException) -> str | None:
    """The file ``torch.load`` was reading when it raised ``error``, read from the frames of its traceback.

    torch's message does not name the file and the libraries calling it (transformers, accelerate)
    do not either; the argument of ``torch.load`` itself does.
    """
    found = None
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "load" and frame.f_globals.get("__name__") == "torch.serialization":
            source = frame.f_locals.get("f")
            if isinstance(source, (str, os.PathLike)):
                found = os.fspath(source)
        traceback = traceback.tb_next
    return found


def refused_pickle(error: BaseException, what: str | None = None) -> RefusedPickle | None:
    """One sentence for torch refusing to unpickle a weights file anywhere in ``error``'s chain, else None.

    ``what`` names the file's owner when the file itself cannot be found ("the radbert encoder in
    'models/radbert'"). torch's own text is never quoted: it suggests ``weights_only=False``.
    """
    for link in _chain(error):
        if isinstance(link, pickle.UnpicklingError) and WEIGHTS_ONLY_REFUSAL in str(link):
            path = _loaded_file(link)
            name = f"'{path}'" if path else (f"A weights file of {what}" if what else "A weights file")
            imported = _GLOBAL.search(str(link))
            if imported:
                return RefusedPickle(
                    f"{name} is not a plain weights file: it is a pickle that calls {imported[1]} when loaded, "
                    "so dva refused it for safety; use the model's .safetensors weights, or convert the file to "
                    "safetensors only if you trust its source."
                )
            return RefusedPickle(
                f"{name} is not a plain PyTorch weights file (damaged, or another format), and dva loads nothing "
                "else for safety; replace it, or use the model's .safetensors weights."
            )
    return None
