"""Checks that keep a fine-tuning run from writing something other than what was asked for.

Before anything loads: every setting against its typed option (non-finite numbers included, also for callers of
the Python API that skip the command line), and ``--out`` apart from the base model and the dataset, which training
would otherwise overwrite. While it trains: the first non-finite loss or gradient norm stops the run, naming the
step, and weights are checked before every checkpoint and before the model is written, so no file dva writes holds
a NaN model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dva.core.errors import ConfigError
from dva.core.settings import FINETUNE_SETTINGS
from dva.finetune.config import flag_for

NOT_CHECKED = ("schedule", "class_prompts")  # held parsed (phases), or checked by the registry and the CLI


def check_settings(config: Any) -> None:
    """Every setting of ``config`` from a ``finetune`` table, checked against its typed option (ranges, finiteness),
    named by its flag. (The strategy's own options are checked against its spec when the run starts.)"""
    for setting in FINETUNE_SETTINGS:
        if setting.name in NOT_CHECKED or not hasattr(config, setting.name):
            continue
        value = getattr(config, setting.name)
        if value is not None:
            setting.option.check(value, flag_for(setting.name))


def _local(location: str | None) -> Path | None:
    """``location`` as an absolute, symlink-free path when it is on this machine (not a hub id), else None."""
    if not location:
        return None
    path = Path(location).expanduser()
    return path.resolve() if path.exists() else None


def check_paths(config: Any) -> None:
    """Refuse an ``--out`` that is, holds or lies inside the base model or the dataset: training writes ``unet/``,
    ``vae/``, ``text_encoder/`` and checkpoints there and would overwrite (or, rotating checkpoints, delete) them."""
    out = Path(config.out).expanduser().resolve()
    for flag, location, what in (("--model", config.base_model, "base model"), ("--data", config.data, "dataset")):
        path = _local(location)
        if path is None:
            continue
        if out == path:
            raise ConfigError(f"--out {config.out} is the {what} folder itself ({flag}), which training would overwrite; "
                              "write the fine-tuned model to a new folder.")
        if path in out.parents:
            raise ConfigError(f"--out {config.out} lies inside the {what} folder {location} ({flag}), which training "
                              "would change; write the fine-tuned model to a folder outside it.")
        if out in path.parents:
            raise ConfigError(f"The {what} folder {location} ({flag}) lies inside --out {config.out}, where training "
                              "writes and deletes files; write the fine-tuned model to another folder.")


def _advice(config: Any, out: Path) -> str:
    from dva.finetune.checkpoints import checkpoint_dirs

    advice = f"lower --learning-rate (now {config.learning_rate:g}) and train again"
    if checkpoint_dirs(out / "checkpoints"):
        advice += ", or continue from the last checkpoint with --resume latest --resume-with-new-settings"
    return advice


def check_loss(accelerator: Any, loss: torch.Tensor, step: int, label: str, config: Any, out: Path) -> None:
    """Stop the run (every process together) when the loss of 1-based ``step`` is not a finite number, before it
    reaches the weights."""
    finite = torch.isfinite(loss.detach()).all()
    everywhere = finite
    if accelerator.num_processes > 1:
        everywhere = accelerator.gather(finite.float().reshape(1)).min() > 0
    if not bool(everywhere):
        value = f"{float(loss.detach()):g}" if not bool(finite) else "not finite on another process"
        raise ConfigError(f"Training stopped at step {step} ({label}): the loss is {value}, not a finite number, so no "
                          f"model was written; {_advice(config, out)}.")


def check_gradient_norm(norm: Any, step: int, label: str, config: Any, out: Path) -> None:
    """Stop the run when the gradient norm of 1-based ``step`` is not finite (skipped under fp16, whose loss scaler
    skips such steps on purpose)."""
    if config.mixed_precision == "fp16" or norm is None:
        return
    value = float(norm)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"Training stopped at step {step} ({label}): the gradient norm is {value:g}, not a finite "
                          f"number, so no model was written; {_advice(config, out)}.")


def gradient_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """The total L2 norm of the gradients, without changing them (for runs that do not clip)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters if p.grad is not None]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([norm.to(norms[0].device) for norm in norms]))


def check_weights(modules: list[Any], step: int, config: Any, out: Path, what: str) -> None:
    """Refuse to write ``what`` (a checkpoint, the model) when a weight of ``modules`` is not finite."""
    for module in modules:
        for name, parameter in module.named_parameters():
            if not bool(torch.isfinite(parameter.detach()).all()):
                raise ConfigError(f"Training stopped at step {step}: the weight {name} holds non-finite numbers, so "
                                  f"{what} was not written; {_advice(config, out)}.")
