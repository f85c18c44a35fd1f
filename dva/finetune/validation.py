"""What a fine-tuning run shows while it trains: the loss log (CSV, and TensorBoard where installed) and
validation counterfactuals every N steps.

Validation runs SDEdit with the current weights on the first ``validation_count`` held-out images,
prompted with the healthy class's prompt, and writes ``OUT/validation/step-N/<stem>.png`` as a strip
``input | counterfactual | attribution heatmap``. It draws only from its own CPU generators (a fixed
seed per image) and puts every module back in the mode it found it in, so the training run's weights
are the same with or without it.
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dva.core import attribution, io
from dva.core.errors import ConfigError, InputError

VALIDATION_FOLDER = "validation"
TENSORBOARD_FOLDER = "tensorboard"
VALIDATION_STEPS = 20
VALIDATION_STRENGTH = 0.6
VALIDATION_GUIDANCE = 4.0
VALIDATION_SEED = 1234


class TrainingLog:
    """``train_log.csv`` (step, class, loss, lr, seconds) and, when ``torch.utils.tensorboard`` imports, the
    loss and learning rate as TensorBoard scalars in ``OUT/tensorboard``. Writes only on the main process.

    A run resumed from step ``start`` keeps the logged rows up to that step and drops the later ones (steps the
    interrupted run took after its last checkpoint, which the resumed run takes again), so each step is logged once.
    """

    HEADER = "step,class,loss,lr,seconds\n"

    def __init__(self, path: Path, main_process: bool, start: int) -> None:
        self.path = path
        self.main = main_process
        self.writer: Any = None
        if not main_process:
            return
        kept = self._rows_up_to(start) if start > 0 else []
        io.atomic_write_text(path, self.HEADER + "".join(kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(path.parent / TENSORBOARD_FOLDER))
        except Exception:  # tensorboard not installed (or broken): the CSV alone
            self.writer = None

    def _rows_up_to(self, start: int) -> list[str]:
        """The logged rows of steps 1..start (an absent or unreadable log keeps none)."""
        try:
            lines = self.path.read_text().splitlines(keepends=True)[1:]
        except (OSError, UnicodeDecodeError):
            return []
        kept = []
        for line in lines:
            step, _, _ = line.partition(",")
            if step.strip().isdigit() and int(step) <= start:
                kept.append(line if line.endswith("\n") else line + "\n")
        return kept

    def write(self, step: int, label: str, loss: float, lr: float, seconds: float) -> None:
        if not self.main:
            return
        with open(self.path, "a") as handle:
            csv.writer(handle).writerow([step, label, f"{loss:.6f}", lr, f"{seconds:.2f}"])
        if self.writer is not None:
            self.writer.add_scalar("loss", loss, step)
            self.writer.add_scalar(f"loss/{label}", loss, step)
            self.writer.add_scalar("lr", lr, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def validation_files(config: Any) -> list[Path]:
    """The validation images of ``config`` (first ``validation_count``); ConfigError if they cannot be used."""
    if config.validation_every < 0:
        raise ConfigError(f"--validation-every is {config.validation_every}; it must be 0 (never) or more.")
    if config.validation_every == 0:
        return []
    if not config.validation_images:
        raise ConfigError("--validation-every needs --validation-images FILE_OR_FOLDER (held-out abnormal scans).")
    if config.validation_count < 1:
        raise ConfigError(f"--validation-count is {config.validation_count}; it must be at least 1.")
    files, missing = io.collect_inputs([config.validation_images])
    if missing or not files:
        reason = missing[0][1] if missing else f"{config.validation_images}: holds no images."
        raise ConfigError(f"--validation-images {reason}")
    files = files[: config.validation_count]
    for path in files:
        try:
            io.read_scan(path)
        except InputError as error:
            raise ConfigError(f"--validation-images: cannot read {path} ({error}).") from error
    return files


class Validator:
    """Counterfactuals of the validation images with the current weights, every ``config.validation_every`` steps."""

    def __init__(self, config: Any, files: list[Path], resolution: int, scheduler_config: dict, out: Path,
                 main_process: bool) -> None:
        self.every = config.validation_every if files and main_process else 0
        self.prompt = config.prompt_for(config.healthy_class)
        self.seed = config.seed
        self.scheduler_config = scheduler_config
        self.folder = out / VALIDATION_FOLDER
        self.images: list[tuple[str, np.ndarray]] = []
        names: set[str] = set()
        for index, path in enumerate(files if self.every else []):
            name = path.stem if path.stem not in names else f"{path.stem}-{index}"
            names.add(name)
            self.images.append((name, io.to_model_input(io.read_scan(path).pixels, resolution)[0]))

    def due(self, step: int) -> bool:
        """Whether validation runs after ``step`` (1-based) steps."""
        return bool(self.every) and step % self.every == 0

    def __call__(self, step: int, unet: Any, encoder: Any, vae: Any,
                 autocast: Any = contextlib.nullcontext) -> list[Path]:
        """Write the strips of ``step``; ``unet``/``encoder`` unwrapped. Returns the files written."""
        from diffusers import DDIMScheduler

        from dva.components.priors import SDEditPrior
        from dva.core.contracts import GenerateRequest, ModelParts

        modules = [unet, encoder, vae]
        modes = [(module, module.training) for root in modules for module in root.modules()]
        for module in modules:
            module.eval()
        try:
            parameter = next(unet.parameters())
            prior = SDEditPrior(strength=VALIDATION_STRENGTH)
            prior.load(ModelParts(unet, vae, DDIMScheduler.from_config(self.scheduler_config), parameter.device,
                                  parameter.dtype))
            written = []
            with torch.no_grad(), autocast():
                embeds = encoder.encode([self.prompt, ""], parameter.device).to(parameter.dtype)
                for index, (name, gray) in enumerate(self.images):
                    image = torch.from_numpy(np.ascontiguousarray(gray)).float()[None, None].repeat(1, 3, 1, 1)
                    generator = torch.Generator("cpu").manual_seed(self.seed * 1000 + VALIDATION_SEED + index)
                    counterfactual = prior.generate(GenerateRequest(
                        image.to(parameter.device, parameter.dtype), embeds[:1], embeds[1:], [generator],
                        VALIDATION_STEPS, VALIDATION_GUIDANCE,
                    ))[0].permute(1, 2, 0).numpy()
                    written.append(self._write(step, name, gray, counterfactual))
            return written
        finally:
            for module, training in modes:
                module.training = training

    def _write(self, step: int, name: str, gray: np.ndarray, counterfactual: np.ndarray) -> Path:
        counterfactual = np.clip(counterfactual, 0.0, 1.0).astype(np.float32)
        signed = attribution.attribution_map(gray, counterfactual.mean(axis=-1))
        heat = attribution.heatmap(signed, attribution.map_scale(signed))
        strip = np.concatenate([np.repeat(gray[..., None], 3, axis=-1).astype(np.float32), counterfactual, heat], axis=1)
        path = self.folder / f"step-{step}" / f"{name}.png"
        io.atomic_write_png(path, strip)
        return path
