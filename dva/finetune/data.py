"""What a fine-tuning step trains on: class-indexed images drawn from seeded generators, their cached VAE
posteriors, cached text states for a frozen encoder, and the per-step seeds that make a resumed run end with the
weights of an uninterrupted one."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dva.core import io
from dva.core.errors import ConfigError
from dva.finetune.schedule import MIX, label_classes

CACHE_ON_DEVICE_BYTES = 2 << 30  # cached latents above this stay on the CPU


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, micro-batch, process, ...): each draw has its own stream."""
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class TrainingData:
    """Class-indexed images at the model's resolution, drawn per step from seeded generators.

    With :meth:`cache_latents`, every image's VAE posterior (mean and std) is computed once and a step
    reads those instead of encoding its images again (the draws from the step's generators stay the same).
    """

    def __init__(self, samples_by_class: dict[str, list[Any]], resolution: int) -> None:
        self.by_class = samples_by_class
        self.resolution = resolution
        self._load = lru_cache(maxsize=4096)(self._read)
        self.latents: dict[Path, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _read(self, path: Path) -> np.ndarray:
        pixels, _ = io.to_model_input(io.read_scan(path).pixels, self.resolution)
        return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)

    @staticmethod
    def _path(sample: Any) -> Path:
        return sample.path if hasattr(sample, "path") else sample

    def draw(self, label: str, count: int, rng: np.random.Generator) -> list[Any]:
        """``count`` samples of ``label``, drawn with replacement from ``rng``; for a mixed label
        (``A+B``) each sample's class is drawn uniformly first, so the batch is class-balanced on average."""
        if MIX not in label:
            pool = self.by_class[label]
            return [pool[i] for i in rng.integers(0, len(pool), size=count)]
        pools = [self.by_class[name] for name in label_classes(label)]
        chosen = rng.integers(0, len(pools), size=count)
        return [pools[c][int(rng.integers(0, len(pools[c])))] for c in chosen]

    def images(self, chosen: list[Any]) -> torch.Tensor:
        """The samples as a (B, 3, H, W) tensor in [-1, 1]."""
        gray = np.stack([self._load(self._path(sample)) for sample in chosen])
        return torch.from_numpy(gray).float().div(127.5).sub(1.0)[:, None].repeat(1, 3, 1, 1)

    def batch(self, label: str, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[Any]]:
        """``count`` images of ``label`` as a (B, 3, H, W) tensor in [-1, 1], and their samples."""
        chosen = self.draw(label, count, rng)
        return self.images(chosen), chosen

    def cache_latents(self, vae: Any, device: torch.device, dtype: torch.dtype, labels: list[str] | None = None,
                      context: Callable[[], Any] = contextlib.nullcontext, chunk: int = 8) -> None:
        """Encode every image of ``labels`` (default: all) once: posterior mean and std in the VAE's dtype.

        Kept on ``device`` when they fit in :data:`CACHE_ON_DEVICE_BYTES`, else on the CPU (moved per step).
        """
        paths = list(dict.fromkeys(self._path(sample) for label in (labels or list(self.by_class))
                                   for sample in self.by_class[label]))
        means, stds = [], []
        with torch.no_grad(), context():
            for begin in range(0, len(paths), chunk):
                images = self.images(paths[begin:begin + chunk]).to(device, dtype=dtype)
                posterior = vae.encode(images).latent_dist
                means.append(posterior.mean.detach().cpu())
                stds.append(posterior.std.detach().cpu())
        mean, std = torch.cat(means), torch.cat(stds)
        keep = device if 2 * mean.numel() * mean.element_size() <= CACHE_ON_DEVICE_BYTES else torch.device("cpu")
        mean, std = mean.to(keep), std.to(keep)
        self.latents = {path: (mean[index], std[index]) for index, path in enumerate(paths)}

    def lesion_fractions(self, chosen: list[Any], size: tuple[int, int]) -> torch.Tensor:
        """``(B, 1, h, w)``: the share of each latent pixel that the sample's lesion mask covers (zeros for a
        sample without one), padded and resized as its image is."""
        return torch.stack([self._lesion(getattr(sample, "lesion", None), size) for sample in chosen])

    @lru_cache(maxsize=4096)  # noqa: B019 (one TrainingData per run; the cache lives as long as it)
    def _lesion(self, path: Path | None, size: tuple[int, int]) -> torch.Tensor:
        if path is None:
            return torch.zeros(1, *size)
        pixels, _ = io.to_model_input(io.read_scan(path).pixels, self.resolution)
        inside = torch.from_numpy((pixels > 0.5).astype(np.float32))[None, None]
        return F.interpolate(inside, size=size, mode="area")[0]

    def posterior(self, chosen: list[Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (mean, std) of the samples, stacked, on ``device``."""
        assert self.latents is not None
        pairs = [self.latents[self._path(sample)] for sample in chosen]
        return (torch.stack([pair[0] for pair in pairs]).to(device), torch.stack([pair[1] for pair in pairs]).to(device))


class TextCache:
    """Text states per distinct prompt, for a frozen encoder (computed once, without gradients)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.states: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self.states]
        if missing:
            with torch.no_grad():
                states = self.encoder(missing, device)
            self.states.update({prompt: state[None] for prompt, state in zip(missing, states.detach())})
        return torch.cat([self.states[prompt] for prompt in prompts])


def check_lesion_masks(config: Any, dataset: Any, labels: list[str]) -> None:
    """``--lesion-weight`` needs lesion masks in the classes it trains on; refuse before any model loads."""
    if config.lesion_weight > 0 and not any(sample.lesion for sample in dataset.samples if sample.label in labels):
        raise ConfigError(f"--lesion-weight {config.lesion_weight:g}: the dataset has no lesion masks in the scheduled "
                          "classes; add <Class>/lesions/ masks (or a lesion column), or drop the option.")


def prepare_caches(config: Any, data: TrainingData, prior_data: TrainingData | None, vae: Any,
                   raw_encoder: Any, device: torch.device, labels: list[str],
                   context: Callable[[], Any] = contextlib.nullcontext) -> TextCache | None:
    """With ``config.cache_latents``: encode the training (and class) images once, and return a text-state
    cache when nothing of the encoder trains (else None: the encoder runs every step)."""
    if not config.cache_latents:
        return None
    dtype = next(vae.parameters()).dtype
    data.cache_latents(vae, device, dtype, labels, context)
    if prior_data is not None:
        prior_data.cache_latents(vae, device, dtype, None, context)
    if any(parameter.requires_grad for parameter in raw_encoder.parameters()):
        return None
    return TextCache(raw_encoder)
