"""What a fine-tuning run writes: the dva model folder's diffusers parts and encoder, and the common fields of
its ``dva.json`` (each strategy adds its own, see :meth:`dva.finetune.strategy.Strategy.describe`)."""

from __future__ import annotations

import json
from typing import Any

import torch

from dva.core import io
from dva.finetune.schedule import format_schedule, schedule_classes, total_steps
from dva.finetune.state import TrainingRun

MODALITY = "chest-xray"


def save_model_folder(run: TrainingRun, encoder_reference: str | None = None) -> None:
    """``unet/``, ``vae/`` (float32), ``scheduler/`` and the encoder (``text_encoder/``, ``tokenizer/``,
    ``projection/``); with ``encoder_reference`` (a frozen encoder the base only names) the trained projection
    alone, as the output keeps naming the encoder."""
    from dva.components.text_encoders import save_projection

    out, encoder = run.out, run.raw_encoder
    run.unwrapped("unet").save_pretrained(out / "unet", safe_serialization=True)
    run.parts.vae.to(torch.float32).save_pretrained(out / "vae", safe_serialization=True)
    io.atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(run.parts.scheduler_config, indent=2))
    if encoder_reference:
        if encoder.projection is not None:
            save_projection(encoder.projection, out / "projection")
    else:
        encoder.save_pretrained(out)


def model_info(run: TrainingRun, strategy: str) -> dict[str, Any]:
    """The fields of dva.json every strategy writes: encoder, base model, classes, schedule, prompts (the healthy
    class's becomes ``dva run``'s default), the dataset, every setting, the prior preservation used and, for a run
    resumed with new settings, each part's settings."""
    from dva.datasets.layouts import dataset_fingerprint

    config, dataset = run.loss_config, run.dataset
    labels = schedule_classes(config.schedule)
    healthy = config.prompt_for(config.healthy_class) if config.healthy_class in labels else None
    history = run.resume_plan.settings_history(run.settings, run.total)
    return {
        "encoder": run.raw_encoder.name,
        "encoder_family": run.raw_encoder.family,
        "modality": MODALITY,
        "base_model": run.parts.source.location,
        "classes": labels,
        "schedule": format_schedule(config.schedule),
        "steps": total_steps(config.schedule),
        "prompts": {"healthy": healthy, "classes": {label: config.prompt_for(label) for label in labels}},
        "data": {"location": str(dataset.root), "layout": dataset.layout, "fingerprint": dataset_fingerprint(dataset),
                 "images": len(dataset.samples)},
        "strategy": strategy,
        "processes": run.accelerator.num_processes,
        "settings": run.config.settings(),
        "prior_preservation": run.prior.describe() if run.prior is not None else None,
        **({"settings_history": history} if history else {}),
    }
