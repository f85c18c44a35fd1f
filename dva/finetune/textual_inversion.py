"""Textual inversion with any registered encoder: one new token per class, nothing else trained.

Each class of the schedule gets a placeholder token (``config.placeholder_template``, made safe:
lower case, no spaces, e.g. ``<lung-opacity>``), added to the encoder's tokenizer and embedding
matrix and initialised from ``config.initializer_token``'s embedding. Only those embedding rows
learn: the UNet, the VAE, the rest of the encoder and its projection are frozen, and because the
embedding matrix is one tensor, the gradients of its other rows are zeroed before every step and the
rows themselves copied back after it (AdamW's weight decay touches every row), so every other weight
stays byte-identical. Works with WordPiece (BERT family) and BPE (CLIP) tokenizers.

The run follows :func:`dva.finetune.dreambooth.train`'s contract (and reuses its helpers): the
schedule visits classes in order, every random draw of a step is seeded by (seed, step, micro-batch,
rank) so a resumed run ends with the weights of an uninterrupted one, checkpoints every
``checkpoint_every`` steps, ``train_log.csv``, and a dva model folder whose prompts use the
placeholders. No prior preservation: the diffusion model does not change.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from dva.core.errors import ConfigError
from dva.finetune import checkpoints, safety
from dva.finetune.dreambooth import (
    LOG_FILE,
    FinetuneConfig,
    TrainingData,
    _load_parts,
    _loss,
    _save_model,
    make_accelerator,
    model_resolution,
    preflight,
    prepare_caches,
)
from dva.finetune.schedule import format_schedule, phase_at, total_steps
from dva.finetune.validation import TrainingLog, Validator

STRATEGY = "textual-inversion"
EMBEDS_FILE = "learned_embeds.safetensors"


def placeholder_for(config: FinetuneConfig, label: str) -> str:
    """The class's placeholder token: the template applied to the label, lower case, runs of spaces as '-'."""
    try:
        token = config.placeholder_template.format(label=label)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(
            f"--placeholder-template {config.placeholder_template!r}: cannot be filled in ({error}); "
            "write e.g. '<{label}>'."
        ) from None
    token = re.sub(r"\s+", "-", token.strip()).lower()
    if not token or token == label.strip().lower():
        raise ConfigError(
            f"--placeholder-template {config.placeholder_template!r}: gives {token!r} for class '{label}', which is "
            "not a new word; write e.g. '<{label}>'."
        )
    return token


def class_prompt(config: FinetuneConfig, label: str, placeholder: str) -> str:
    """The class's training prompt: its --class-prompt (where it names '{label}') or the template, on the placeholder."""
    given = config.class_prompts.get(label)
    if given:
        prompt = given.replace("{label}", placeholder)
        if placeholder not in prompt:
            raise ConfigError(
                f"--class-prompt {label}={given!r}: textual inversion needs the class's placeholder in its prompt; "
                f"write '{{label}}' where {placeholder} belongs, e.g. '{{label}} chest x ray'."
            )
        return prompt
    prompt = config.prompt_template.format(label=placeholder)
    if placeholder not in prompt:
        raise ConfigError(f"--prompt-template {config.prompt_template!r}: textual inversion needs '{{label}}' in it.")
    return prompt


def _initializer_id(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    unknown = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1 or (unknown is not None and ids[0] == unknown):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ConfigError(
            f"--initializer-token {word!r}: must be one token of the encoder's vocabulary, but it tokenizes to "
            f"{len(ids)} token(s) {pieces}; pick a single word the tokenizer knows (e.g. 'chest', or a shorter one)."
        )
    return int(ids[0])


def add_placeholders(encoder: Any, placeholders: dict[str, str], initializer: str) -> list[int]:
    """Add the placeholder tokens to the tokenizer and embedding matrix, rows set to the initializer's; their ids."""
    tokenizer, model = encoder.tokenizer, encoder.model
    init_id = _initializer_id(tokenizer, initializer)
    tokens = list(placeholders.values())
    if len(set(tokens)) != len(tokens):
        raise ConfigError(f"--placeholder-template gives the same token to two classes ({placeholders}); include '{{label}}'.")
    vocabulary = tokenizer.get_vocab()
    taken = [token for token in tokens if token in vocabulary]
    if taken:
        raise ConfigError(f"Placeholder token(s) {taken} are already in the encoder's vocabulary; change --placeholder-template.")
    if tokenizer.add_tokens(tokens) != len(tokens):
        raise ConfigError(f"The tokenizer refused placeholder token(s) {tokens}; change --placeholder-template.")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    for token, token_id in zip(tokens, ids):
        if tokenizer.encode(f"a {token} b", add_special_tokens=False).count(token_id) != 1:
            raise ConfigError(f"Placeholder {token!r} does not tokenize to its own token; change --placeholder-template.")
    try:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    except TypeError:  # transformers without mean_resizing
        model.resize_token_embeddings(len(tokenizer))
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        for token_id in ids:
            weight[token_id] = weight[init_id]
    return list(ids)


def train(
    config: FinetuneConfig,
    catalogue: Any,
    on_step: Callable[[int, int, str, float], None] = lambda step, total, label, loss: None,
) -> Path:
    """Learn one token per scheduled class and write a dva model folder into ``config.out``; returns its path."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from dva.core.model_folder import DVA_JSON, write_dva_json

    if config.use_sample_prompts:
        raise ConfigError("--use-sample-prompts: textual inversion learns one token per class from the class prompt; drop the flag.")
    if config.use_8bit_adam:
        raise ConfigError("--use-8bit-adam: textual inversion trains a few embedding rows only; drop the flag.")
    out = Path(config.out)
    phases = config.schedule
    mixed = next((phase.label for phase in phases if phase.mixed), None)
    if mixed:
        raise ConfigError(f"--schedule: textual inversion learns one token per class in its own phase; "
                          f"split '{mixed}' into one phase per class.")
    labels = list(dict.fromkeys(phase.label for phase in phases))
    placeholders = {label: placeholder_for(config, label) for label in labels}
    prompts = {label: class_prompt(config, label, placeholders[label]) for label in labels}
    dataset, _, validation = preflight(config, catalogue, labels, prior_preservation=False)
    accelerator = make_accelerator(config)
    settings = checkpoints.training_settings(config, STRATEGY, accelerator.num_processes)
    resume_plan = checkpoints.plan_resume(config, settings)
    device = accelerator.device
    source, unet, vae, scheduler_config, encoder = _load_parts(config, catalogue, device)
    new_ids = add_placeholders(encoder, placeholders, config.initializer_token)
    resolution = model_resolution(unet, vae)
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    data = TrainingData({label: dataset.by_class(label) for label in dataset.classes()}, resolution)
    # dreambooth's loss and saver read prompts through config.prompt_for: hand them the placeholder prompts
    run_config = dataclasses.replace(config, class_prompts=prompts, use_sample_prompts=False, prior_weight=0.0)

    unet.requires_grad_(False).eval()
    vae.requires_grad_(False).eval()
    encoder.requires_grad_(False)
    encoder.eval()  # the frozen encoder as at inference (no dropout); only the new rows learn
    embedding = encoder.model.get_input_embeddings().weight
    embedding.requires_grad_(True)
    original = embedding.detach().clone()
    frozen_rows = torch.ones(embedding.shape[0], dtype=torch.bool, device=embedding.device)
    frozen_rows[new_ids] = False
    if config.gradient_checkpointing:
        encoder.model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW([embedding], lr=config.learning_rate)
    lr_scheduler = get_scheduler("constant", optimizer)
    encoder, optimizer, lr_scheduler = accelerator.prepare(encoder, optimizer, lr_scheduler)
    raw_encoder = accelerator.unwrap_model(encoder)
    embedding = raw_encoder.model.get_input_embeddings().weight

    total = total_steps(phases)
    out.mkdir(parents=True, exist_ok=True)
    if resume_plan.checkpoint is not None:
        learned = checkpoints.read_state(resume_plan.checkpoint).get("placeholders", placeholders)
        if learned != placeholders:  # other tokens: their embedding rows cannot carry over, whatever the flags
            raise ConfigError(f"--resume {resume_plan.checkpoint}: learned placeholders {learned}, not {placeholders}.")
    start = checkpoints.load(accelerator, resume_plan, optimizer, lr_scheduler, config.learning_rate)
    prepare_caches(config, data, None, vae, raw_encoder, device, labels, accelerator.autocast)  # the encoder trains
    log = TrainingLog(out / LOG_FILE, accelerator.is_main_process, start)
    validator = Validator(run_config, validation, resolution, scheduler_config, out, accelerator.is_main_process)
    started = time.perf_counter()
    try:
        _train_steps(config, run_config, accelerator, phases, start, out, data, unet, encoder, raw_encoder, vae,
                     noise_scheduler, device, embedding, original, frozen_rows, optimizer, lr_scheduler, validator, log,
                     on_step, resume_plan.state(settings, placeholders=placeholders), started)
    finally:
        log.close()
    safety.check_weights([raw_encoder], total, config, out, "the model")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_model(run_config, unet, vae, scheduler_config, raw_encoder, dataset, source, out, accelerator.num_processes)
        learned = {token: embedding[token_id].detach().to("cpu", torch.float32).clone().contiguous()
                   for token, token_id in zip(placeholders.values(), new_ids)}
        save_file(learned, str(out / EMBEDS_FILE))
        info = json.loads((out / DVA_JSON).read_text())
        for key in ("format", "format_version"):
            info.pop(key, None)
        settings_used = dataclasses.asdict(dataclasses.replace(config, prior_weight=0.0))  # none: the UNet is frozen
        settings_used["schedule"] = format_schedule(phases)
        history = resume_plan.settings_history(settings, total)
        info.update(strategy=STRATEGY, placeholders=placeholders, initializer_token=config.initializer_token,
                    learned_embeddings=EMBEDS_FILE, settings=settings_used, **({"settings_history": history} if history else {}))
        write_dva_json(out, **info)
    accelerator.wait_for_everyone()
    return out


def _train_steps(config: FinetuneConfig, run_config: FinetuneConfig, accelerator: Any, phases: list, start: int,
                 out: Path, data: Any, unet: Any, encoder: Any, raw_encoder: Any, vae: Any, noise_scheduler: Any,
                 device: Any, embedding: torch.Tensor, original: torch.Tensor, frozen_rows: torch.Tensor,
                 optimizer: Any, lr_scheduler: Any, validator: Any, log: Any,
                 on_step: Callable[[int, int, str, float], None], checkpoint_state: dict[str, Any],
                 started: float) -> None:
    """The optimizer steps from ``start`` to the schedule's end: only the placeholder rows change; a non-finite
    loss or gradient norm stops the run, and a checkpoint is written only with finite weights."""
    total = total_steps(phases)
    for step in range(start, total):
        phase = phase_at(phases, step)
        losses = []
        for micro in range(config.gradient_accumulation):
            with accelerator.accumulate(encoder), accelerator.autocast():
                loss = _loss(run_config, step, micro, accelerator, phase, data, None, unet, encoder, raw_encoder,
                             vae, noise_scheduler, device, torch.float32)
                safety.check_loss(accelerator, loss, step + 1, phase.label, config, out)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if embedding.grad is not None:
                        embedding.grad[frozen_rows] = 0
                    norm = (accelerator.clip_grad_norm_([embedding], config.max_grad_norm) if config.max_grad_norm > 0
                            else safety.gradient_norm([embedding]))
                    safety.check_gradient_norm(norm, step + 1, phase.label, config, out)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                with torch.no_grad():  # weight decay moved every row: put the others back, bit for bit
                    embedding[frozen_rows] = original[frozen_rows]
            losses.append(float(loss.detach()))
        value = float(np.mean(losses))
        log.write(step + 1, phase.label, value, lr_scheduler.get_last_lr()[0], time.perf_counter() - started)
        if validator.due(step + 1):
            validator(step + 1, unet, raw_encoder, vae, accelerator.autocast)
        on_step(step + 1, total, phase.label, value)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            safety.check_weights([raw_encoder], step + 1, config, out, f"checkpoint step {step + 1}")
            checkpoints.save_checkpoint(accelerator, out / "checkpoints", step + 1, checkpoint_state,
                                        config.keep_checkpoints)
