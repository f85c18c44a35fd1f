"""DreamBooth with any registered encoder, class by class, with class-specific prior preservation.

diffusers' DreamBooth example refuses encoders other than CLIP/RoBERTa/T5 and trains one concept per
run; the thesis trained SD v1-4 jointly with RadBERT on four classes in sequence. This trainer does
that with accelerate underneath (mixed precision, gradient accumulation, multi-GPU via
``accelerate launch``), and every random draw of a step is seeded by (seed, step, micro-batch, rank),
so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
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
from dva.core.runtime import model_resolution
from dva.core.errors import ConfigError
from dva.finetune import checkpoints
from dva.finetune.schedule import MIX, Phase, format_schedule, label_classes, phase_at, schedule_classes, total_steps
from dva.finetune.validation import TrainingLog, Validator, validation_files

LOG_FILE = "train_log.csv"
CACHE_ON_DEVICE_BYTES = 2 << 30  # cached latents above this stay on the CPU


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
    lesion_weight: float = 0.0  # the loss inside ground-truth lesion masks counts 1 + lesion_weight times
    snr_gamma: float = 0.0  # min-SNR-gamma loss weighting (0: off; 5 is the paper's and diffusers' choice)
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


def check_lesion_masks(config: FinetuneConfig, dataset: Any, labels: list[str]) -> None:
    """``--lesion-weight`` needs lesion masks in the classes it trains on; refuse before any model loads."""
    if config.lesion_weight > 0 and not any(sample.lesion for sample in dataset.samples if sample.label in labels):
        raise ConfigError(f"--lesion-weight {config.lesion_weight:g}: the dataset has no lesion masks in the scheduled "
                          "classes; add <Class>/lesions/ masks (or a lesion column), or drop the option.")


def prepare_caches(config: FinetuneConfig, data: TrainingData, prior_data: TrainingData | None, vae: Any,
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


def make_accelerator(config: FinetuneConfig) -> Any:
    """accelerate's Accelerator for the run's precision, accumulation and device."""
    from accelerate import Accelerator

    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation,
        cpu=config.device == "cpu",
    )


def weight_dtype_of(config: FinetuneConfig) -> torch.dtype:
    """The dtype frozen parts (VAE, a frozen encoder) run in under mixed precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)


def make_optimizer(parameters: list, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW with ``use_8bit_adam``."""
    optimizer_class = torch.optim.AdamW
    if config.use_8bit_adam:
        try:
            import bitsandbytes

            optimizer_class = bitsandbytes.optim.AdamW8bit
        except ImportError as error:
            raise ConfigError("--use-8bit-adam needs bitsandbytes; pip install bitsandbytes, or drop the flag.") from error
    return optimizer_class(parameters, lr=config.learning_rate)


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
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from dva.datasets.layouts import check_dataset, open_dataset

    out = Path(config.out)
    phases = config.schedule
    dataset = open_dataset(config.data, config.layout, catalogue=catalogue)
    check_dataset(dataset, classes=schedule_classes(phases))
    check_lesion_masks(config, dataset, schedule_classes(phases))
    validation = validation_files(config)
    accelerator = make_accelerator(config)
    device = accelerator.device
    source, unet, vae, scheduler_config, encoder = _load_parts(config, catalogue, device)
    resolution = model_resolution(unet, vae)
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
    optimizer = make_optimizer(parameters, config)
    lr_scheduler = get_scheduler("constant", optimizer)
    unet, encoder, optimizer, lr_scheduler = accelerator.prepare(unet, encoder, optimizer, lr_scheduler)
    weight_dtype = weight_dtype_of(config)
    if weight_dtype != torch.float32:
        vae.to(device, dtype=weight_dtype)

    start = checkpoints.resume(accelerator, out / "checkpoints", config.resume)
    raw_encoder = accelerator.unwrap_model(encoder)
    text_cache = prepare_caches(config, data, prior_data, vae, raw_encoder, device, schedule_classes(phases))
    log = TrainingLog(out / LOG_FILE, accelerator.is_main_process, start)
    validator = Validator(config, validation, resolution, scheduler_config, out, accelerator.is_main_process)
    train_loop(
        config, accelerator, phases=phases, start=start, out=out, data=data, prior_data=prior_data, unet=unet,
        encoder=encoder, raw_encoder=raw_encoder, vae=vae, noise_scheduler=noise_scheduler, weight_dtype=weight_dtype,
        text_cache=text_cache, parameters=parameters, optimizer=optimizer, lr_scheduler=lr_scheduler,
        validator=validator, log=log, on_step=on_step, checkpoint_state={"schedule": format_schedule(phases)},
    )
    log.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_model(config, accelerator.unwrap_model(unet), vae, scheduler_config, raw_encoder, dataset, source, out,
                    accelerator.num_processes)
    accelerator.wait_for_everyone()
    return out


def train_loop(
    config: FinetuneConfig, accelerator: Any, *, phases: list[Phase], start: int, out: Path, data: Any, prior_data: Any,
    unet: Any, encoder: Any, raw_encoder: Any, vae: Any, noise_scheduler: Any, weight_dtype: torch.dtype,
    text_cache: Any, parameters: list, optimizer: Any, lr_scheduler: Any, validator: Any, log: Any,
    on_step: Callable[[int, int, str, float], None], checkpoint_state: dict[str, Any],
) -> None:
    """The optimizer steps from ``start`` to the schedule's end: loss, backward, clip, step, log, validate, checkpoint.

    Shared by the strategies that train through the denoising loss (DreamBooth, LoRA).
    """
    total = total_steps(phases)
    started = time.perf_counter()
    for step in range(start, total):
        phase = phase_at(phases, step)
        losses = []
        for micro in range(config.gradient_accumulation):
            with accelerator.accumulate(unet, encoder):
                loss = _loss(config, step, micro, accelerator, phase, data, prior_data, unet, encoder, raw_encoder,
                             vae, noise_scheduler, accelerator.device, weight_dtype, text_cache)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            losses.append(float(loss.detach()))
        value = float(np.mean(losses))
        log.write(step + 1, phase.label, value, lr_scheduler.get_last_lr()[0], time.perf_counter() - started)
        if validator.due(step + 1):
            validator(step + 1, accelerator.unwrap_model(unet), raw_encoder, vae, accelerator.autocast)
        on_step(step + 1, total, phase.label, value)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            checkpoints.save_checkpoint(accelerator, out / "checkpoints", step + 1, checkpoint_state, config.keep_checkpoints)


def _loss(config, step, micro, accelerator, phase, data, prior_data, unet, encoder, raw_encoder, vae,
          noise_scheduler, device, weight_dtype, text_cache=None) -> torch.Tensor:
    """Denoising loss of one micro-batch (instance images plus, with prior preservation, class images).

    With cached latents (``data.latents``) the VAE posterior is read instead of computed, with the same draws
    from the step's generators; ``text_cache`` (a frozen encoder) replaces the encoder's forward pass.
    """
    seed = _seed(config.seed, step, micro, accelerator.process_index)
    rng = np.random.default_rng(seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.manual_seed(seed)  # dropout inside the encoder draws from the global generators
    chosen = data.draw(phase.label, config.batch_size, rng)
    prompts = [
        sample.prompt if config.use_sample_prompts and sample.prompt
        else config.prompt_for(getattr(sample, "label", phase.label))
        for sample in chosen
    ]
    prompts = ["" if rng.random() < config.prompt_dropout else prompt for prompt in prompts]
    class_chosen = None
    if prior_data is not None:
        class_chosen = prior_data.draw("class", config.batch_size, rng)
        prompts += [config.class_prompt] * config.batch_size
    with torch.no_grad():
        if data.latents is not None:
            mean, std = data.posterior(chosen, device)
            if class_chosen is not None:
                class_mean, class_std = prior_data.posterior(class_chosen, device)
                mean, std = torch.cat([mean, class_mean]), torch.cat([std, class_std])
        else:
            images = data.images(chosen)
            if class_chosen is not None:
                images = torch.cat([images, prior_data.images(class_chosen)])
            posterior = vae.encode(images.to(device, dtype=weight_dtype)).latent_dist
            mean, std = posterior.mean, posterior.std
        noise_for_latents = torch.randn(mean.shape, generator=generator).to(device, mean.dtype)
        latents = (mean + std * noise_for_latents) * vae.config.scaling_factor
    latents = latents.float()
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    embeddings = text_cache(prompts, device) if text_cache is not None else encoder(prompts, device)
    prediction = unet(noisy, timesteps, embeddings).sample
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    weights = None
    if config.lesion_weight > 0:
        weights = 1 + config.lesion_weight * data.lesion_fractions(chosen, tuple(latents.shape[-2:])).to(device)
    batch = len(chosen)
    step_weights = min_snr_weights(noise_scheduler, timesteps[:batch], config.snr_gamma) if config.snr_gamma else None
    prediction, target = prediction.float(), target.float()
    instance = _weighted_mse(prediction[:batch], target[:batch], weights, step_weights)
    if prior_data is None:
        return instance
    return instance + config.prior_weight * F.mse_loss(prediction[batch:], target[batch:])


def min_snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights per sample (Hang et al. 2023), as diffusers' training examples compute them:
    ``min(SNR, gamma) / SNR`` for epsilon prediction, ``/ (SNR + 1)`` for v-prediction. Low-noise steps, which
    the plain loss favours, count less; the steps where the image is mostly noise, and the prompt is what tells
    the model what to draw, keep their weight."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else clipped / snr


def _weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                  step_weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE with per-pixel ``weights`` ``(B, 1, h, w)``, normalised by their mean so the loss keeps its scale,
    and per-sample ``step_weights`` ``(B,)`` (min-SNR).

    Lesion weighting (as sd-scripts' masked loss, but keeping the rest of the image): a lesion covers a few
    percent of the pixels, so the unweighted loss gains almost nothing from learning what a prompt says about
    it; weighting its pixels makes the prompt's information about the lesion worth learning.
    """
    if weights is None and step_weights is None:
        return F.mse_loss(prediction, target)
    errors = (prediction - target) ** 2
    if weights is not None:
        weights = weights.expand_as(prediction)
        errors = weights * errors / weights.mean()
    per_sample = errors.mean(dim=tuple(range(1, errors.ndim)))
    return (per_sample * step_weights).mean() if step_weights is not None else per_sample.mean()


def _save_model(config, unet, vae, scheduler_config, encoder, dataset, source, out: Path, processes: int) -> None:
    """The dva model folder: diffusers parts, the encoder (+ projection), dva.json written last."""
    from dva.components.text_encoders import save_projection
    from dva.core.model_folder import write_dva_json
    from dva.datasets.layouts import dataset_fingerprint

    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.to(torch.float32).save_pretrained(out / "vae", safe_serialization=True)
    io.atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(scheduler_config, indent=2))
    reference = encoder_reference(config, source)
    if reference:  # a frozen encoder the base only names: keep naming it, save the trained projection alone
        if encoder.projection is not None:
            save_projection(encoder.projection, out / "projection")
    else:
        encoder.save_pretrained(out)
    labels = schedule_classes(config.schedule)
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
        **({"encoder_source": reference} if reference else {}),
    )


def encoder_reference(config: FinetuneConfig, source: Any) -> str | None:
    """The base's ``encoder_source`` when the trained model may name it instead of copying the encoder.

    That holds when the base is a dva folder without ``text_encoder/`` that names its encoder's source, the
    encoder stays frozen and no other encoder or path was asked for; the copy would be byte-identical.
    """
    reference = source.dva.get("encoder_source") if source.is_dva_folder and not source.has_text_encoder else None
    same_encoder = config.encoder in (None, source.dva.get("encoder")) and config.encoder_path is None
    return reference if reference and same_encoder and not config.train_text_encoder else None
