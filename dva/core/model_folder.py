"""Model sources: a diffusers Stable Diffusion folder or hub id, or a dva model folder.

A **dva model folder** is the diffusers layout (``unet/``, ``vae/``, ``scheduler/``) plus the text
encoder and tokenizer of whatever family was used (``text_encoder/``, ``tokenizer/``), the
projection to the UNet's width if any (``projection/``), and ``dva.json`` saying which encoder,
modality and prompts it was trained with. A **LoRA folder** (adapters only, see :mod:`dva.core.adapters`)
stands for the base model its ``dva.json`` names, with the adapters on top.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dva.core.adapters import is_lora_folder
from dva.core.errors import ConfigError
from dva.core.io import atomic_write_text

DVA_JSON = "dva.json"
BUNDLED_MODEL = "tiny-phantom"
REQUIRED_PARTS = ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
MAX_RESOLUTION = 4096  # image side in pixels; SD v1 makes 512, SD 2 768, SDXL 1024
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where the diffusion model comes from, and what its dva.json (if any) says."""

    location: str
    is_local: bool
    dva: dict[str, Any] = field(default_factory=dict)
    has_text_encoder: bool = True

    @property
    def is_dva_folder(self) -> bool:
        return bool(self.dva)

    @property
    def has_projection(self) -> bool:
        return self.is_local and (Path(self.location) / "projection" / "config.json").is_file()


def bundled_model() -> Path | None:
    """dva's own tiny model inside the package (``make tiny-model``), or None when it is not there."""
    folder = Path(str(resources.files("dva") / "models" / BUNDLED_MODEL))
    return folder if (folder / DVA_JSON).is_file() else None


def inspect_model(location: str | None) -> ModelSource:
    """Check that ``location`` is a usable model folder (or plausible hub id) before loading anything.

    No location means dva's bundled tiny model (trained on phantoms only; its dva.json note says so on every run).
    """
    if not location:
        bundled = bundled_model()
        if bundled is None:
            raise ConfigError(
                "No model given, and dva's bundled tiny model is missing (make tiny-model rebuilds it): pass --model "
                "with a Stable Diffusion folder, a hub id such as CompVis/stable-diffusion-v1-4, or a dva model folder."
            )
        location = str(bundled)
    path = Path(location).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--model {location}: is a file; pass the model folder (with unet/, vae/, scheduler/).")
        if is_lora_folder(path):  # adapters only: the base model named in its dva.json, with the adapters on top
            return resolve_lora_source(path)
        missing = [part for part in REQUIRED_PARTS if not (path / part).is_file()]
        if missing:
            raise ConfigError(
                f"Model folder {location} lacks {', '.join(missing)}; pass a diffusers Stable Diffusion "
                "folder or a dva model folder."
            )
        check_model_size(path)
        dva = read_dva_json(path)
        return ModelSource(str(path), True, dva, (path / "text_encoder" / "config.json").is_file())
    looks_local = location.startswith((".", "/", "~")) or Path(location.split("/", 1)[0]).is_dir()
    if HUB_ID.match(location) and not looks_local:
        return ModelSource(location, False)
    raise ConfigError(f"--model {location}: no such folder, and not a hub id (organisation/name); check the path.")


def resolve_lora_source(folder: str | Path) -> ModelSource:
    """The :class:`ModelSource` of a LoRA folder's base model, with the LoRA's dva.json on top.

    ``location`` is the base model (so the UNet, VAE, scheduler and encoder load from there), ``dva`` is the LoRA
    folder's dva.json (its encoder, prompts, classes) plus ``lora_folder``: the folder that
    :func:`dva.core.adapters.apply_lora` takes.
    """
    folder = Path(folder).expanduser()
    info = read_dva_json(folder)
    base_location = info.get("base_model")
    if not base_location:
        raise ConfigError(f"LoRA folder {folder}: dva.json names no base_model; rewrite it with the base model's path.")
    try:
        base = inspect_model(base_location)
    except ConfigError as error:
        raise ConfigError(
            f"LoRA folder {folder} applies to the base model '{base_location}', which cannot be used ({error}); "
            "put the base model back there, or edit base_model in its dva.json."
        ) from error
    trained = base.dva.get("encoder") if base.is_dva_folder else "clip"
    if info.get("encoder") != trained:
        raise ConfigError(f"LoRA folder {folder}: trained with encoder '{info.get('encoder')}' but its base "
                          f"'{base_location}' has '{trained}'; the base model was replaced.")
    return ModelSource(base.location, base.is_local, {**info, "lora_folder": str(folder)}, base.has_text_encoder)


def check_model_size(folder: Path) -> None:
    """Refuse a model whose configs ask for images too large to allocate (a damaged or hand-edited config),
    before any weights load: the UNet's ``sample_size`` times the VAE's downsampling is the image side."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        sample_size = unet.get("sample_size", 64)
        sample_size = sample_size[0] if isinstance(sample_size, list) and sample_size else sample_size
        factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    except (OSError, ValueError, AttributeError, TypeError) as error:
        raise ConfigError(f"Model folder {folder}: its unet/ or vae/ config.json is not valid JSON ({error}); "
                          "restore it from the model's source.") from None
    if not isinstance(sample_size, int) or isinstance(sample_size, bool) or not 1 <= sample_size * factor <= MAX_RESOLUTION:
        raise ConfigError(
            f"Model folder {folder}: unet/config.json's sample_size {sample_size!r} makes {sample_size!r} x {factor} pixel "
            f"images, not a size between 1 and {MAX_RESOLUTION}; restore the config from the model's source."
        )


def read_dva_json(folder: Path) -> dict[str, Any]:
    file = folder / DVA_JSON
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except ValueError as error:
        raise ConfigError(f"{file}: not valid JSON ({error}); restore it from the model's source.") from error
    if not isinstance(data, dict) or "encoder" not in data:
        raise ConfigError(f"{file}: must be a JSON object naming at least its 'encoder'.")
    return data


def write_dva_json(folder: str | Path, **fields: Any) -> None:
    """Write ``dva.json`` (format version 1) into a model folder."""
    data = {"format": "dva-model", "format_version": 1, **fields}
    atomic_write_text(Path(folder) / DVA_JSON, json.dumps(data, indent=2, sort_keys=True) + "\n")
