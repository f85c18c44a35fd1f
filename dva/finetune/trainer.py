"""The one fine-tuning trainer: a strategy (DreamBooth, textual inversion, LoRA, a plugin's) trained on a labelled
dataset, class by class, into a dva model folder.

diffusers' DreamBooth example refuses encoders other than CLIP/RoBERTa/T5 and trains one concept per run; the
thesis trained SD v1-4 jointly with RadBERT on four classes in sequence. This trainer does that with accelerate
underneath (mixed precision, gradient accumulation, multi-GPU via ``accelerate launch``), and every random draw
of a step is seeded by (seed, step, micro-batch, rank), so a run resumed from a checkpoint ends with the same
weights as an uninterrupted one. What trains and what is written is the strategy's
(:class:`dva.finetune.strategy.Strategy`); everything else is here, in this order: checks before any model
loads, the model, the data, the optimizer, the steps, the checks of the weights, the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dva.core.errors import ConfigError
from dva.core.model_folder import write_dva_json
from dva.finetune import checkpoints, safety
from dva.finetune.config import flag_for
from dva.finetune.data import TrainingData, check_lesion_masks, prepare_caches
from dva.finetune.output import model_info
from dva.finetune.prior import DATASET, PriorPlan, class_images, plan_prior
from dva.finetune.schedule import phase_at, schedule_classes
from dva.finetune.state import Parts, TrainingRun
from dva.finetune.strategy import Strategy
from dva.finetune.validation import TrainingLog, Validator, validation_files

LOG_FILE = "train_log.csv"
StepCallback = Callable[[int, int, str, float], None]


def _no_report(step: int, total: int, label: str, loss: float) -> None:
    """The default ``on_step``: report nothing."""


def train(config: Any, catalogue: Any, on_step: StepCallback = _no_report) -> Path:
    """Train ``config.strategy`` (a registered finetuner) with ``config.options`` (checked against its spec,
    defaults filled in) and write a dva model folder into ``config.out``; returns its path.

    ``on_step(step, total, label, loss)`` is called after each optimizer step. A finetuner whose implementation
    is not a :class:`Strategy` is a whole training run of its own, called as ``implementation(config, catalogue,
    on_step=on_step)``.
    """
    spec = catalogue.get("finetuner", config.strategy)
    options = spec.check_options(config.options, f"--strategy {config.strategy}",
                                 {key: flag_for(key) for key in config.options})
    config = dataclasses.replace(config, options=options)
    implementation = spec.resolve()
    if not (isinstance(implementation, type) and issubclass(implementation, Strategy)):
        return implementation(config, catalogue, on_step=on_step)
    return run_strategy(implementation(**options), config, catalogue, on_step)


def run_strategy(strategy: Strategy, config: Any, catalogue: Any, on_step: StepCallback = _no_report) -> Path:
    """Everything of a run around the strategy's own parts (see the module's docstring)."""
    strategy.check(config)
    labels = strategy.labels(config)
    dataset, prior, validation = preflight(config, catalogue, labels, strategy.prior_preservation)
    accelerator = make_accelerator(config)
    settings = checkpoints.training_settings(config, accelerator.num_processes)
    resume_plan = checkpoints.plan_resume(config, settings)
    run = start(strategy, config, catalogue, accelerator, dataset, prior)
    run.settings, run.resume_plan = settings, resume_plan
    first = resume(run, strategy)
    context = accelerator.autocast if strategy.autocast else contextlib.nullcontext
    run.text_cache = prepare_caches(config, run.data, run.prior_data, run.parts.vae, run.raw_encoder,
                                    accelerator.device, labels, context)
    log = TrainingLog(run.out / LOG_FILE, accelerator.is_main_process, first)
    validator = Validator(run.loss_config, validation, run.resolution, run.parts.scheduler_config, run.out,
                          accelerator.is_main_process)
    try:
        train_steps(run, strategy, first, log, validator, on_step)
    finally:
        log.close()
    finish(run, strategy)
    return run.out


def preflight(config: Any, catalogue: Any, labels: list[str] | None = None,
              prior_preservation: bool = True) -> tuple[Any, PriorPlan | None, list[Path]]:
    """Everything checked before a model loads: the settings (finite, in range), ``--out`` apart from the base model
    and the dataset, the dataset and its scheduled classes (``labels``, default the schedule's), lesion masks, the
    prior-preservation images and the validation images. Returns the dataset, the prior plan and validation files."""
    from dva.core.model_folder import inspect_model
    from dva.datasets.layouts import check_dataset, open_dataset

    safety.check_settings(config)
    safety.check_paths(config)
    labels = labels if labels is not None else schedule_classes(config.schedule)
    dataset = open_dataset(config.data, config.layout, catalogue=catalogue)
    check_dataset(dataset, classes=labels)
    check_lesion_masks(config, dataset, labels)
    prior = plan_prior(config, dataset, inspect_model(config.base_model)) if prior_preservation else None
    if prior is not None and prior.source == DATASET and prior.label not in labels:
        check_dataset(dataset, classes=[prior.label])
    return dataset, prior, validation_files(config)


def make_accelerator(config: Any) -> Any:
    """accelerate's Accelerator for the run's precision, accumulation and device."""
    from accelerate import Accelerator

    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation,
        cpu=config.device == "cpu",
    )


def weight_dtype_of(config: Any) -> torch.dtype:
    """The dtype frozen parts (VAE, a frozen encoder) run in under mixed precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)


def make_optimizer(parameters: list, config: Any) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW with ``use_8bit_adam``."""
    optimizer_class = torch.optim.AdamW
    if config.use_8bit_adam:
        try:
            import bitsandbytes

            optimizer_class = bitsandbytes.optim.AdamW8bit
        except ImportError as error:
            raise ConfigError("--use-8bit-adam needs bitsandbytes; pip install bitsandbytes, or drop the flag.") from error
    return optimizer_class(parameters, lr=config.learning_rate)


def load_parts(config: Any, catalogue: Any, device: torch.device) -> Parts:
    """The base model in float32 on ``device``, with the run's encoder (fitted to the UNet's width)."""
    from dva.core.model_folder import inspect_model
    from dva.core.registry import Recipe
    from dva.core.runtime import load_diffusion_parts, load_encoder, quiet_libraries

    quiet_libraries()
    source = inspect_model(config.base_model)
    if source.dva.get("lora_folder"):
        raise ConfigError(
            f"--model {config.base_model}: is a LoRA adapter folder; fine-tune its base model "
            f"({source.location}), or merge the adapters first."
        )
    unet, vae, scheduler_config = load_diffusion_parts(source, device, torch.float32)
    recipe = Recipe(encoder=config.encoder, encoder_options={"path": config.encoder_path, "max_length": 77})
    encoder = load_encoder(recipe, catalogue, source, int(unet.config.cross_attention_dim))
    encoder.to(device)
    return Parts(source, unet, vae, scheduler_config, encoder)


def start(strategy: Strategy, config: Any, catalogue: Any, accelerator: Any, dataset: Any,
          prior: PriorPlan | None) -> TrainingRun:
    """Load the model, the data (and prior-preservation images, generated by the base model before the strategy
    changes it), let the strategy set what trains, and prepare it with accelerate."""
    from diffusers import DDPMScheduler

    from dva.core.runtime import model_resolution

    parts = load_parts(config, catalogue, accelerator.device)
    strategy.adapt(parts, config)
    resolution = model_resolution(parts.unet, parts.vae)
    noise_scheduler = DDPMScheduler.from_config(parts.scheduler_config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = TrainingData({label: dataset.by_class(label) for label in dataset.classes()}, resolution)
    prior_data = prior_training_data(prior, config, parts, resolution, out)
    trained = strategy.setup(parts, config)
    unet, encoder, parameters, optimizer, lr_scheduler = prepare(accelerator, parts, trained, config)
    vae_dtype = cast_frozen(strategy, parts, trained, config, accelerator.device)
    return TrainingRun(
        config=config, loss_config=strategy.loss_config(config), accelerator=accelerator, out=out, dataset=dataset,
        prior=prior, parts=parts, resolution=resolution, noise_scheduler=noise_scheduler, data=data,
        prior_data=prior_data, trained=trained, unet=unet, encoder=encoder, raw_encoder=accelerator.unwrap_model(encoder),
        parameters=parameters, optimizer=optimizer, lr_scheduler=lr_scheduler, vae_dtype=vae_dtype,
    )


def prior_training_data(prior: PriorPlan | None, config: Any, parts: Parts, resolution: int,
                        out: Path) -> TrainingData | None:
    """The prior-preservation images of the plan (generated first if need be), or None without prior preservation."""
    if prior is None:
        return None
    files = class_images(prior, config, parts.unet, parts.vae, parts.scheduler_config, parts.encoder, resolution, out)
    return TrainingData({"class": files}, resolution)


def prepare(accelerator: Any, parts: Parts, trained: tuple[str, ...], config: Any) -> tuple[Any, ...]:
    """The optimizer over every UNet and encoder parameter that requires a gradient, a constant learning rate, and
    the ``trained`` modules prepared with them; returns (unet, encoder, parameters, optimizer, lr_scheduler)."""
    from diffusers.optimization import get_scheduler

    modules = {"unet": parts.unet, "encoder": parts.encoder}
    parameters = [p for module in modules.values() for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, config)
    lr_scheduler = get_scheduler("constant", optimizer)
    *wrapped, optimizer, lr_scheduler = accelerator.prepare(*(modules[name] for name in trained), optimizer, lr_scheduler)
    modules.update(zip(trained, wrapped))
    return modules["unet"], modules["encoder"], parameters, optimizer, lr_scheduler


def cast_frozen(strategy: Strategy, parts: Parts, trained: tuple[str, ...], config: Any,
                device: torch.device) -> torch.dtype:
    """Under mixed precision, the VAE and the frozen modules accelerate did not prepare run in its dtype (a
    strategy with ``autocast`` keeps them in float32 and runs the loss under autocast); returns the VAE's dtype."""
    dtype = weight_dtype_of(config)
    if strategy.autocast or dtype == torch.float32:
        return torch.float32
    frozen = [module for name, module in (("unet", parts.unet), ("encoder", parts.encoder)) if name not in trained]
    for module in (parts.vae, *frozen):
        module.to(device, dtype=dtype)
    return dtype


def resume(run: TrainingRun, strategy: Strategy) -> int:
    """Load the resume plan's checkpoint (if any); the 0-based step training goes on from. A checkpoint whose
    strategy state (e.g. textual inversion's placeholders) differs from this run's cannot carry over."""
    checkpoint = run.resume_plan.checkpoint
    if checkpoint is not None:
        recorded = checkpoints.read_state(checkpoint)
        for key, value in strategy.checkpoint_state().items():
            learned = recorded.get(key, value)
            if learned != value:
                raise ConfigError(f"--resume {checkpoint}: learned {key} {learned}, not {value}.")
    return checkpoints.load(run.accelerator, run.resume_plan, run.optimizer, run.lr_scheduler, run.config.learning_rate)


def train_steps(run: TrainingRun, strategy: Strategy, first: int, log: TrainingLog, validator: Validator,
                on_step: StepCallback) -> None:
    """The optimizer steps from ``first`` to the schedule's end: each step's micro-batches, its log row, validation
    and checkpoint when due."""
    config, accelerator = run.config, run.accelerator
    total, started = run.total, time.perf_counter()
    state = run.resume_plan.state(run.settings, **strategy.checkpoint_state())
    for step in range(first, total):
        phase = phase_at(config.schedule, step)
        losses = [optimizer_step(run, strategy, step, micro, phase) for micro in range(config.gradient_accumulation)]
        value = float(np.mean(losses))
        log.write(step + 1, phase.label, value, run.lr_scheduler.get_last_lr()[0], time.perf_counter() - started)
        if validator.due(step + 1):
            validator(step + 1, run.unwrapped("unet"), run.raw_encoder, run.parts.vae, accelerator.autocast)
        on_step(step + 1, total, phase.label, value)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            safety.check_weights(trained_modules(run), step + 1, config, run.out, f"checkpoint step {step + 1}")
            checkpoints.save_checkpoint(accelerator, run.out / "checkpoints", step + 1, state, config.keep_checkpoints)


def optimizer_step(run: TrainingRun, strategy: Strategy, step: int, micro: int, phase: Any) -> float:
    """One micro-batch: loss, backward and, when the gradients are synchronised, clip and check them; then the
    optimizer's step (accelerate skips it while accumulating). A non-finite loss or gradient norm stops the run
    before the weights change. Returns the loss."""
    config, accelerator = run.config, run.accelerator
    modules = [getattr(run, name) for name in run.trained]
    with accelerator.accumulate(*modules), (accelerator.autocast() if strategy.autocast else contextlib.nullcontext()):
        loss = strategy.loss(run, step, micro, phase)
        safety.check_loss(accelerator, loss, step + 1, phase.label, config, run.out)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            strategy.before_clip(run)
            norm = (accelerator.clip_grad_norm_(run.parameters, config.max_grad_norm) if config.max_grad_norm > 0
                    else safety.gradient_norm(run.parameters))
            safety.check_gradient_norm(norm, step + 1, phase.label, config, run.out)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad()
        strategy.after_step(run)
    return float(loss.detach())


def trained_modules(run: TrainingRun) -> list[Any]:
    """The modules the run trains, unwrapped: what a checkpoint's weights are checked in."""
    return [run.unwrapped(name) for name in run.trained]


def finish(run: TrainingRun, strategy: Strategy) -> None:
    """Check the trained weights (and the VAE) are finite, then write the strategy's files and dva.json (last)."""
    accelerator = run.accelerator
    safety.check_weights([*trained_modules(run), run.parts.vae], run.total, run.config, run.out, strategy.output_name)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        strategy.save(run)
        write_dva_json(run.out, **{**model_info(run, strategy.name), **strategy.describe(run)})
    accelerator.wait_for_everyone()
