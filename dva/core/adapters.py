"""Adapters: trained weights a model folder keeps apart from its base model's, in their file formats.

- The encoder's **projection** to the UNet's width (``projection/``: ``model.safetensors`` + ``config.json``),
  saved with a dva model folder or a LoRA folder whose encoder is narrower or wider than the UNet.
- **LoRA adapters** (peft) on the UNet's attention (``unet_lora/``) and optionally the text encoder's
  (``text_encoder_lora/``): ``adapter_model.safetensors`` + ``adapter_config.json`` each. A **LoRA folder** holds
  only these and a ``dva.json`` with strategy ``"lora"`` naming its ``base_model``;
  :func:`dva.core.model_folder.inspect_model` resolves it to that base and :func:`apply_lora` puts the adapters on.

Only safetensors are read: nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dva.core.errors import ConfigError
from dva.core.io import atomic_write_text

if TYPE_CHECKING:
    import torch

PROJECTION = "projection"
PROJECTION_WEIGHTS = "model.safetensors"
PROJECTION_CONFIG = "config.json"
LORA_STRATEGY = "lora"
UNET_LORA = "unet_lora"
TEXT_ENCODER_LORA = "text_encoder_lora"
WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = {"bert": ["query", "key", "value"], "clip": ["q_proj", "k_proj", "v_proj", "out_proj"]}


def _short(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


# -- the projection -----------------------------------------------------------------------------------------------


def save_projection(projection: torch.nn.Linear, folder: Path) -> None:
    """Save a projection as safetensors plus a small JSON config."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in projection.state_dict().items()}
    tmp = folder / (PROJECTION_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / PROJECTION_WEIGHTS)
    config = {"in_features": projection.in_features, "out_features": projection.out_features}
    atomic_write_text(folder / PROJECTION_CONFIG, json.dumps(config, indent=2))


def load_projection(folder: str | Path) -> torch.nn.Linear:
    """Load a projection saved by :func:`save_projection` (safetensors only: nothing is unpickled)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / PROJECTION_CONFIG).read_text())
        state = load_file(str(folder / PROJECTION_WEIGHTS))
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read the projection in '{folder}' ({_short(error)}); the model folder is incomplete.") from error
    projection = torch.nn.Linear(int(config["in_features"]), int(config["out_features"]))
    projection.load_state_dict(state)
    return projection


# -- LoRA adapters ------------------------------------------------------------------------------------------------


def lora_config(rank: int, alpha: float, targets: list[str]) -> Any:
    """peft's LoraConfig of dva's adapters (gaussian init, as diffusers' LoRA training)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")


def add_unet_adapter(unet: Any, config: Any) -> None:
    """Put fresh adapters on a diffusers UNet's attention (diffusers' own peft integration)."""
    unet.add_adapter(config)


def add_text_adapter(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """Put fresh adapters on a transformers text model's attention, in place."""
    from peft import inject_adapter_in_model

    return inject_adapter_in_model(config, model)


def save_adapter(module: torch.nn.Module, folder: Path, rank: int, alpha: float, targets: list[str]) -> None:
    """The adapter weights of ``module`` (float32 safetensors, written then renamed) and their config."""
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(module).items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    settings = {"r": rank, "lora_alpha": alpha, "target_modules": targets}
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(settings, indent=2))


def is_lora_folder(path: str | Path) -> bool:
    """A LoRA folder: dva.json with strategy "lora" and the UNet adapter."""
    path = Path(path)
    try:
        info = json.loads((path / "dva.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("strategy") == LORA_STRATEGY and (path / UNET_LORA / WEIGHTS).is_file()


def _load_adapter(module: torch.nn.Module, folder: Path, add: Callable[[torch.nn.Module, Any], Any]) -> None:
    import torch
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        settings = json.loads((folder / ADAPTER_CONFIG).read_text())
        state = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read the LoRA adapter in '{folder}' ({error}); the LoRA folder is incomplete.") from error
    parameter = next(module.parameters())
    add(module, lora_config(int(settings["r"]), float(settings["lora_alpha"]), list(settings["target_modules"])))
    result = set_peft_model_state_dict(module, state)
    missing = [key for key in getattr(result, "missing_keys", []) if "lora_" in key]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ConfigError(f"The LoRA adapter in '{folder}' does not fit this model "
                          f"({len(missing)} missing, {len(unexpected)} unexpected weights); is it the right base model?")
    with torch.no_grad():  # the adapters follow the base weights' device and dtype (base weights untouched)
        for name, weight in module.named_parameters():
            if "lora_" in name:
                weight.data = weight.data.to(device=parameter.device, dtype=parameter.dtype)


def _merge(module: torch.nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()


def apply_lora(unet: Any, text_encoder: Any, folder: str | Path, merge: bool = False) -> None:
    """Attach (or, with ``merge``, fold into the base weights) the adapters of a LoRA folder, in place.

    ``text_encoder`` is dva's text encoder (``.model``, ``.projection``); either may be None to apply only the
    other's adapters. A trained projection saved in the folder replaces the encoder's.
    """
    folder = Path(folder)
    if unet is not None:
        _load_adapter(unet, folder / UNET_LORA, add_unet_adapter)
        if merge:
            _merge(unet)
    if text_encoder is None:
        return
    if (folder / TEXT_ENCODER_LORA / WEIGHTS).is_file():
        _load_adapter(text_encoder.model, folder / TEXT_ENCODER_LORA, add_text_adapter)
        if merge:
            _merge(text_encoder.model)
    if (folder / PROJECTION / PROJECTION_CONFIG).is_file():
        parameter = next(text_encoder.model.parameters())
        text_encoder.projection = load_projection(folder / PROJECTION).to(parameter.device, parameter.dtype)
        text_encoder.projection_trained = True
