"""LoRA: low-rank adapters on the UNet's attention (and optionally the text encoder), base weights frozen.

Same contract as :func:`dva.finetune.dreambooth.train` (multi-class schedule, per-step seeding so a
resumed run ends with the weights of an uninterrupted one, checkpoints, ``train_log.csv``), but the
output folder holds only the adapters::

    unet_lora/adapter_model.safetensors + adapter_config.json
    text_encoder_lora/...                  (with lora_text_encoder)
    projection/                            (only if the base encoder had no trained projection)
    dva.json                               strategy "lora", base_model, encoder, lora {...}

``dva run --model LORA_FOLDER`` loads ``base_model`` and applies the adapters with :func:`apply_lora`
(see :func:`resolve_lora_source` for the model-folder side).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dva.core.errors import ConfigError
from dva.finetune import checkpoints, safety
from dva.finetune.dreambooth import (
    LOG_FILE,
    FinetuneConfig,
    TrainingData,
    _load_parts,
    _seed,
    make_accelerator,
    make_optimizer,
    model_resolution,
    preflight,
    prepare_caches,
    prior_training_data,
    train_loop,
    weight_dtype_of,
)
from dva.finetune.schedule import format_schedule, schedule_classes, total_steps
from dva.finetune.validation import TrainingLog, Validator

STRATEGY = "lora"
UNET_LORA = "unet_lora"
TEXT_ENCODER_LORA = "text_encoder_lora"
WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = {"bert": ["query", "key", "value"], "clip": ["q_proj", "k_proj", "v_proj", "out_proj"]}


def _lora_config(rank: int, alpha: float, targets: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")


def _add_unet_adapter(unet: Any, lora_config: Any) -> None:
    unet.add_adapter(lora_config)


def _add_text_adapter(model: torch.nn.Module, lora_config: Any) -> torch.nn.Module:
    from peft import inject_adapter_in_model

    return inject_adapter_in_model(lora_config, model)


def _base_encoder_is_used(config: FinetuneConfig, source: Any) -> bool:
    trained = source.dva.get("encoder") if source.is_dva_folder else "clip"
    return config.encoder_path is None and (config.encoder or trained) == trained and source.has_text_encoder


def train(
    config: FinetuneConfig,
    catalogue: Any,
    on_step: Callable[[int, int, str, float], None] = lambda step, total, label, loss: None,
) -> Path:
    """Run the schedule with LoRA adapters and write a small adapter folder into ``config.out``."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from dva.core.model_folder import inspect_model

    if config.lora_rank < 1 or config.lora_alpha <= 0:
        raise ConfigError(f"LoRA rank {config.lora_rank} / alpha {config.lora_alpha}: rank must be >= 1, alpha > 0.")
    out = Path(config.out)
    phases = config.schedule
    if is_lora_folder(Path(config.base_model).expanduser()):
        raise ConfigError(f"--model {config.base_model}: is itself a LoRA folder; pass its base model instead.")
    base = inspect_model(config.base_model)
    if not _base_encoder_is_used(config, base):
        raise ConfigError(
            "LoRA keeps the base model's own text encoder (the adapter folder holds no encoder); drop --encoder/"
            "--encoder-path, or fine-tune with --strategy dreambooth first to make a model with that encoder."
        )
    dataset, prior, validation = preflight(config, catalogue)
    accelerator = make_accelerator(config)
    settings = checkpoints.training_settings(config, STRATEGY, accelerator.num_processes)
    resume_plan = checkpoints.plan_resume(config, settings)
    device = accelerator.device
    source, unet, vae, scheduler_config, encoder = _load_parts(config, catalogue, device)
    resolution = model_resolution(unet, vae)
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    out.mkdir(parents=True, exist_ok=True)
    data = TrainingData({label: dataset.by_class(label) for label in dataset.classes()}, resolution)
    # generated class images (if asked for) come from the base model, before any adapter exists
    prior_data = prior_training_data(prior, config, unet, vae, scheduler_config, encoder, resolution, out)

    unet.requires_grad_(False)
    encoder.requires_grad_(False)
    torch.manual_seed(_seed(config.seed, -1))  # the adapters' gaussian init
    _add_unet_adapter(unet, _lora_config(config.lora_rank, config.lora_alpha, UNET_TARGETS))
    if config.lora_text_encoder:
        targets = TEXT_TARGETS.get(encoder.family)
        if targets is None:
            raise ConfigError(f"LoRA on the text encoder knows families {sorted(TEXT_TARGETS)}, not '{encoder.family}'.")
        _add_text_adapter(encoder.model, _lora_config(config.lora_rank, config.lora_alpha, targets))
    train_projection = encoder.projection is not None and not encoder.projection_trained
    if train_projection:  # a fresh projection is part of what is trained (and saved)
        encoder.projection.requires_grad_(True)
    unet.train()
    encoder.model.train(config.lora_text_encoder)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    parameters = [p for module in (unet, encoder) for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, config)
    lr_scheduler = get_scheduler("constant", optimizer)
    encoder_trains = any(p.requires_grad for p in encoder.parameters())
    if encoder_trains:  # DDP refuses a module with nothing to train
        unet, encoder, optimizer, lr_scheduler = accelerator.prepare(unet, encoder, optimizer, lr_scheduler)
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    weight_dtype = weight_dtype_of(config)
    if weight_dtype != torch.float32:
        vae.to(device, dtype=weight_dtype)
        if not encoder_trains:
            encoder.to(device, dtype=weight_dtype)

    start = checkpoints.load(accelerator, resume_plan, optimizer, lr_scheduler, config.learning_rate)
    raw_encoder = accelerator.unwrap_model(encoder)
    text_cache = prepare_caches(config, data, prior_data, vae, raw_encoder, device, schedule_classes(phases))
    log = TrainingLog(out / LOG_FILE, accelerator.is_main_process, start)
    validator = Validator(config, validation, resolution, scheduler_config, out, accelerator.is_main_process)
    try:
        train_loop(
            config, accelerator, phases=phases, start=start, out=out, data=data, prior_data=prior_data, unet=unet,
            encoder=encoder, raw_encoder=raw_encoder, vae=vae, noise_scheduler=noise_scheduler,
            weight_dtype=weight_dtype, text_cache=text_cache, parameters=parameters, optimizer=optimizer,
            lr_scheduler=lr_scheduler, validator=validator, log=log, on_step=on_step,
            checkpoint_state=resume_plan.state(settings),
        )
    finally:
        log.close()
    total = total_steps(phases)
    safety.check_weights([unet, raw_encoder], total, config, out, "the adapters")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_adapters(config, accelerator.unwrap_model(unet), raw_encoder, train_projection, dataset, source, out,
                       accelerator.num_processes, prior=prior, history=resume_plan.settings_history(settings, total))
    accelerator.wait_for_everyone()
    return out


def _save_state(module: torch.nn.Module, folder: Path, targets: list[str], config: FinetuneConfig) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from dva.core.io import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(module).items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    settings = {"r": config.lora_rank, "lora_alpha": config.lora_alpha, "target_modules": targets}
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(settings, indent=2))


def _save_adapters(config, unet, encoder, train_projection, dataset, source, out: Path, processes: int,
                   prior: Any = None, history: list[dict[str, Any]] | None = None) -> None:
    """Adapter weights (safetensors) and dva.json (written last, with the prior preservation used and, for a run
    resumed with new settings, each part's settings)."""
    from dva.components.text_encoders import save_projection
    from dva.core.model_folder import write_dva_json
    from dva.datasets.layouts import dataset_fingerprint

    _save_state(unet, out / UNET_LORA, UNET_TARGETS, config)
    if config.lora_text_encoder:
        _save_state(encoder.model, out / TEXT_ENCODER_LORA, TEXT_TARGETS[encoder.family], config)
    if train_projection:
        save_projection(encoder.projection, out / "projection")
    labels = schedule_classes(config.schedule)
    healthy = config.prompt_for(config.healthy_class) if config.healthy_class in labels else None
    settings = asdict(config)
    settings["schedule"] = format_schedule(config.schedule)
    write_dva_json(
        out,
        encoder=encoder.name,
        encoder_family=encoder.family,
        modality="chest-xray",
        base_model=str(Path(source.location).resolve()) if source.is_local else source.location,
        classes=labels,
        schedule=settings["schedule"],
        steps=total_steps(config.schedule),
        prompts={"healthy": healthy, "classes": {label: config.prompt_for(label) for label in labels}},
        data={"location": str(dataset.root), "layout": dataset.layout, "fingerprint": dataset_fingerprint(dataset),
              "images": len(dataset.samples)},
        strategy=STRATEGY,
        processes=processes,
        settings=settings,
        prior_preservation=prior.describe() if prior is not None else None,
        **({"settings_history": history} if history else {}),
        lora={
            "rank": config.lora_rank,
            "alpha": config.lora_alpha,
            "unet": UNET_LORA,
            "text_encoder": TEXT_ENCODER_LORA if config.lora_text_encoder else None,
            "projection": "projection" if train_projection else None,
        },
    )


# -- loading -------------------------------------------------------------------------------------


def is_lora_folder(path: str | Path) -> bool:
    """A folder written by :func:`train`: dva.json with strategy "lora" and the UNet adapter."""
    path = Path(path)
    try:
        info = json.loads((path / "dva.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("strategy") == "lora" and (path / UNET_LORA / WEIGHTS).is_file()


def resolve_lora_source(folder: str | Path) -> Any:
    """The :class:`ModelSource` of a LoRA folder's base model, with the LoRA's dva.json on top.

    ``location`` is the base model (so the UNet, VAE, scheduler and encoder load from there), ``dva`` is
    the LoRA folder's dva.json (its encoder, prompts, classes) plus ``lora_folder``: the folder that
    :func:`apply_lora` takes.
    """
    from dva.core.model_folder import ModelSource, inspect_model, read_dva_json

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


def _load_state(module: torch.nn.Module, folder: Path, add: Callable[[torch.nn.Module, Any], Any]) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        settings = json.loads((folder / ADAPTER_CONFIG).read_text())
        state = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read the LoRA adapter in '{folder}' ({error}); the LoRA folder is incomplete.") from error
    parameter = next(module.parameters())
    add(module, _lora_config(int(settings["r"]), float(settings["lora_alpha"]), list(settings["target_modules"])))
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

    ``text_encoder`` is dva's :class:`TextEncoder`; either may be None to apply only the other's adapters. A trained
    projection saved in the folder replaces the encoder's.
    """
    from dva.components.text_encoders import load_projection

    folder = Path(folder)
    if unet is not None:
        _load_state(unet, folder / UNET_LORA, _add_unet_adapter)
        if merge:
            _merge(unet)
    if text_encoder is None:
        return
    if (folder / TEXT_ENCODER_LORA / WEIGHTS).is_file():
        _load_state(text_encoder.model, folder / TEXT_ENCODER_LORA, _add_text_adapter)
        if merge:
            _merge(text_encoder.model)
    if (folder / "projection" / "config.json").is_file():
        parameter = next(text_encoder.model.parameters())
        text_encoder.projection = load_projection(folder / "projection").to(parameter.device, parameter.dtype)
        text_encoder.projection_trained = True
