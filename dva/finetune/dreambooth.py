"""DreamBooth with any registered encoder, class by class, with class-specific prior preservation.

diffusers' DreamBooth example refuses encoders other than CLIP/RoBERTa/T5 and trains one concept per
run; the thesis trained SD v1-4 jointly with RadBERT on four classes in sequence. This trainer does
that with accelerate underneath (mixed precision, gradient accumulation, multi-GPU via
``accelerate launch``), and every random draw of a step is seeded by (seed, step, micro-batch, rank),
so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dva.core import io
from dva.core.errors import ConfigError
from dva.finetune import checkpoints
from dva.finetune.schedule import Phase, format_schedule, phase_at, total_steps

LOG_FILE = "train_log.csv"


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (recorded in dva.json and each checkpoint)."""

    base_model: str
    data: str
    out: str
    schedule: list[Phase]
    encoder: str | None = None
    encoder_path: str | None = None
    layout: str = "auto"
    prompt_template: str = "{label}"
    class_prompts: dict[str, str] = field(default_factory=dict)
    use_sample_prompts: bool = False
    healthy_class: str = "Normal"
    prompt_dropout: float = 0.0
    train_text_encoder: bool = True
    prior_weight: float = 1.0
    class_prompt: str = "chest x ray"
    class_data: str | None = None
    class_images: int = 8
    class_steps: int = 25
    learning_rate: float = 5e-5
    batch_size: int = 2
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    cache_latents: bool = False
    validation_every: int = 0
    validation_images: str | None = None
    validation_count: int = 4
    max_grad_norm: float = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: str | None = None
    seed: int = 0
    device: str = "auto"
    # textual inversion: one new token per class, initialised from an existing word
    placeholder_template: str = "<{label}>"
    initializer_token: str = "chest"
    # LoRA: adapters on the UNet's attention (and optionally the text encoder)
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_text_encoder: bool = False

    def prompt_for(self, label: str) -> str:
        return self.class_prompts.get(label) or self.prompt_template.format(label=label)


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class TrainingData:
    """Class-indexed images at the model's resolution, drawn per step from seeded generators."""

    def __init__(self, samples_by_class: dict[str, list[Any]], resolution: int) -> None:
        self.by_class = samples_by_class
        self.resolution = resolution
        self._load = lru_cache(maxsize=4096)(self._read)

    def _read(self, path: Path) -> np.ndarray:
        pixels, _ = io.to_model_input(io.read_scan(path).pixels, self.resolution)
        return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)

    def batch(self, label: str, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[Any]]:
        """``count`` images of ``label`` as a (B, 3, H, W) tensor in [-1, 1], and their samples."""
        pool = self.by_class[label]
        chosen = [pool[i] for i in rng.integers(0, len(pool), size=count)]
        gray = np.stack([self._load(sample.path if hasattr(sample, "path") else sample) for sample in chosen])
        images = torch.from_numpy(gray).float().div(127.5).sub(1.0)[:, None].repeat(1, 3, 1, 1)
        return images, chosen


def _load_parts(config: FinetuneConfig, catalogue: Any, device: torch.device) -> tuple[Any, Any, Any, dict, Any]:
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
    return source, unet, vae, scheduler_config, encoder


def generate_class_images(
    config: FinetuneConfig, unet: Any, vae: Any, scheduler_config: dict, encoder: Any, resolution: int, out: Path
) -> list[Path]:
    """Class images for prior preservation, generated once by the base model into a cache (or supplied)."""
    if config.class_data:
        files, _ = io.collect_inputs([config.class_data])
        if not files:
            raise ConfigError(f"--class-data {config.class_data}: holds no images; pass a folder of class images.")
        return files
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    key = hashlib.sha256(
        json.dumps([config.base_model, encoder.name, config.class_prompt, resolution, config.class_steps, config.seed]).encode()
    ).hexdigest()[:12]
    folder = out / "class-images" / key
    wanted = [folder / f"{index:05d}.png" for index in range(config.class_images)]
    missing = [path for path in wanted if not path.is_file()]
    if missing:
        pipeline = StableDiffusionPipeline(
            vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=DDIMScheduler.from_config(scheduler_config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        embeds = encoder.encode([config.class_prompt, ""]).to(unet.dtype)
        for path in missing:
            generator = torch.Generator("cpu").manual_seed(_seed(config.seed, int(path.stem), 7))
            with torch.no_grad():
                image = pipeline(
                    prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], height=resolution, width=resolution,
                    num_inference_steps=config.class_steps, generator=generator, output_type="np",
                ).images[0]
            io.atomic_write_png(path, image.mean(axis=-1))
    return wanted


def train(
    config: FinetuneConfig,
    catalogue: Any,
    on_step: Callable[[int, int, str, float], None] = lambda step, total, label, loss: None,
) -> Path:
    """Run the schedule and write a dva model folder into ``config.out``; returns its path."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from dva.datasets.layouts import check_dataset, open_dataset

    out = Path(config.out)
    phases = config.schedule
    dataset = open_dataset(config.data, config.layout, catalogue=catalogue)
    check_dataset(dataset, classes=[phase.label for phase in phases])
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation,
        cpu=config.device == "cpu",
    )
    device = accelerator.device
    source, unet, vae, scheduler_config, encoder = _load_parts(config, catalogue, device)
    resolution = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    out.mkdir(parents=True, exist_ok=True)
    class_files = (
        generate_class_images(config, unet, vae, scheduler_config, encoder, resolution, out)
        if config.prior_weight > 0 else []
    )
    data = TrainingData({label: dataset.by_class(label) for label in dataset.classes()}, resolution)
    prior_data = TrainingData({"class": class_files}, resolution) if class_files else None

    unet.requires_grad_(True).train()
    encoder.model.requires_grad_(config.train_text_encoder)
    encoder.model.train(config.train_text_encoder)
    if getattr(encoder.model, "pooler", None) is not None:  # BERT's pooler never reaches the UNet (and DDP needs every
        encoder.model.pooler.requires_grad_(False)  # trained parameter to take part in the loss)
    if encoder.projection is not None:
        encoder.projection.requires_grad_(True)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            encoder.model.gradient_checkpointing_enable()
    parameters = [p for module in (unet, encoder) for p in module.parameters() if p.requires_grad]
    optimizer_class = torch.optim.AdamW
    if config.use_8bit_adam:
        try:
            import bitsandbytes

            optimizer_class = bitsandbytes.optim.AdamW8bit
        except ImportError as error:
            raise ConfigError("--use-8bit-adam needs bitsandbytes; pip install bitsandbytes, or drop the flag.") from error
    optimizer = optimizer_class(parameters, lr=config.learning_rate)
    lr_scheduler = get_scheduler("constant", optimizer)
    unet, encoder, optimizer, lr_scheduler = accelerator.prepare(unet, encoder, optimizer, lr_scheduler)
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)
    if weight_dtype != torch.float32:
        vae.to(device, dtype=weight_dtype)

    total = total_steps(phases)
    start = 0
    if config.resume:
        found = checkpoints.find_checkpoint(out / "checkpoints", config.resume)
        if found is not None:
            accelerator.load_state(str(found))
            start = int(checkpoints.read_state(found)["step"])
    log_path = out / LOG_FILE
    if accelerator.is_main_process and start == 0:
        log_path.write_text("step,class,loss,lr,seconds\n")
    raw_encoder = accelerator.unwrap_model(encoder)
    started = time.perf_counter()
    for step in range(start, total):
        phase = phase_at(phases, step)
        losses = []
        for micro in range(config.gradient_accumulation):
            with accelerator.accumulate(unet, encoder):
                loss = _loss(config, step, micro, accelerator, phase, data, prior_data, unet, encoder, raw_encoder,
                             vae, noise_scheduler, device, weight_dtype)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            losses.append(float(loss.detach()))
        value = float(np.mean(losses))
        if accelerator.is_main_process:
            with open(log_path, "a") as handle:
                csv.writer(handle).writerow(
                    [step + 1, phase.label, f"{value:.6f}", lr_scheduler.get_last_lr()[0], f"{time.perf_counter() - started:.2f}"]
                )
        on_step(step + 1, total, phase.label, value)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            checkpoints.save_checkpoint(accelerator, out / "checkpoints", step + 1, {"schedule": format_schedule(phases)},
                                        config.keep_checkpoints)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_model(config, accelerator.unwrap_model(unet), vae, scheduler_config, raw_encoder, dataset, source, out,
                    accelerator.num_processes)
    accelerator.wait_for_everyone()
    return out


def _loss(config, step, micro, accelerator, phase, data, prior_data, unet, encoder, raw_encoder, vae,
          noise_scheduler, device, weight_dtype) -> torch.Tensor:
    """Denoising loss of one micro-batch (instance images plus, with prior preservation, class images)."""
    seed = _seed(config.seed, step, micro, accelerator.process_index)
    rng = np.random.default_rng(seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.manual_seed(seed)  # dropout inside the encoder draws from the global generators
    images, chosen = data.batch(phase.label, config.batch_size, rng)
    prompts = [
        sample.prompt if config.use_sample_prompts and sample.prompt else config.prompt_for(phase.label)
        for sample in chosen
    ]
    prompts = ["" if rng.random() < config.prompt_dropout else prompt for prompt in prompts]
    if prior_data is not None:
        class_images, _ = prior_data.batch("class", config.batch_size, rng)
        images = torch.cat([images, class_images])
        prompts += [config.class_prompt] * config.batch_size
    with torch.no_grad():
        posterior = vae.encode(images.to(device, dtype=weight_dtype)).latent_dist
        noise_for_latents = torch.randn(posterior.mean.shape, generator=generator).to(device, posterior.mean.dtype)
        latents = (posterior.mean + posterior.std * noise_for_latents) * vae.config.scaling_factor
    latents = latents.float()
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    embeddings = encoder(prompts, device)
    prediction = unet(noisy, timesteps, embeddings).sample
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    if prior_data is None:
        return F.mse_loss(prediction.float(), target.float())
    instance_prediction, class_prediction = prediction.float().chunk(2)
    instance_target, class_target = target.float().chunk(2)
    return F.mse_loss(instance_prediction, instance_target) + config.prior_weight * F.mse_loss(class_prediction, class_target)


def _save_model(config, unet, vae, scheduler_config, encoder, dataset, source, out: Path, processes: int) -> None:
    """The dva model folder: diffusers parts, the encoder (+ projection), dva.json written last."""
    from dva.core.model_folder import write_dva_json
    from dva.datasets.layouts import dataset_fingerprint

    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.to(torch.float32).save_pretrained(out / "vae", safe_serialization=True)
    io.atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(scheduler_config, indent=2))
    encoder.save_pretrained(out)
    labels = [phase.label for phase in config.schedule]
    healthy = config.prompt_for(config.healthy_class) if config.healthy_class in labels else None
    settings = asdict(config)
    settings["schedule"] = format_schedule(config.schedule)
    write_dva_json(
        out,
        encoder=encoder.name,
        encoder_family=encoder.family,
        modality="chest-xray",
        base_model=source.location,
        classes=labels,
        schedule=settings["schedule"],
        steps=total_steps(config.schedule),
        prompts={"healthy": healthy, "classes": {label: config.prompt_for(label) for label in labels}},
        data={"location": str(dataset.root), "layout": dataset.layout, "fingerprint": dataset_fingerprint(dataset),
              "images": len(dataset.samples)},
        strategy="dreambooth",
        processes=processes,
        settings=settings,
    )
