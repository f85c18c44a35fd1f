"""The denoising loss of one micro-batch, as diffusers' training examples compute it, with dva's weightings:
lesion masks (``lesion_weight``), min-SNR-gamma (``snr_gamma``) and prior preservation (``prior_weight``).

Every random draw of a micro-batch (images, prompt dropout, latent noise, timesteps, the encoder's dropout) comes
from generators seeded by (seed, step, micro-batch, process), so a resumed run repeats the draws of an
uninterrupted one. The order of the draws is part of that contract: changing it changes every trained weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dva.finetune.data import TextCache, TrainingData, step_seed
from dva.finetune.schedule import Phase


@dataclass
class LossInputs:
    """What the loss of a run reads besides the step: its data, models and how the text is encoded.

    ``vae_dtype`` is the dtype images are handed to the VAE in; ``text_cache`` (a frozen encoder) replaces the
    encoder's forward pass.
    """

    data: TrainingData
    prior_data: TrainingData | None
    unet: Any
    encoder: Any
    vae: Any
    noise_scheduler: Any
    device: torch.device
    vae_dtype: torch.dtype
    text_cache: TextCache | None = None


def denoising_loss(config: Any, step: int, micro: int, process: int, phase: Phase, inputs: LossInputs) -> torch.Tensor:
    """Denoising loss of one micro-batch (instance images plus, with prior preservation, class images).

    With cached latents (``data.latents``) the VAE posterior is read instead of computed, with the same draws
    from the step's generators.
    """
    seed = step_seed(config.seed, step, micro, process)
    rng = np.random.default_rng(seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.manual_seed(seed)  # dropout inside the encoder draws from the global generators
    chosen = inputs.data.draw(phase.label, config.batch_size, rng)
    prompts = _prompts(config, chosen, phase, rng)
    class_chosen = None
    if inputs.prior_data is not None:
        class_chosen = inputs.prior_data.draw("class", config.batch_size, rng)
        prompts += [config.prior_prompt()] * config.batch_size
    latents = _latents(inputs, chosen, class_chosen, generator)
    noise = torch.randn(latents.shape, generator=generator).to(inputs.device)
    scheduler = inputs.noise_scheduler
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(inputs.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    text = inputs.text_cache if inputs.text_cache is not None else inputs.encoder
    prediction = inputs.unet(noisy, timesteps, text(prompts, inputs.device)).sample
    target = scheduler.get_velocity(latents, noise, timesteps) if scheduler.config.prediction_type == "v_prediction" else noise
    return _weighted_loss(config, inputs, chosen, latents, timesteps, prediction.float(), target.float())


def _prompts(config: Any, chosen: list[Any], phase: Phase, rng: np.random.Generator) -> list[str]:
    """Each sample's prompt (its own with ``use_sample_prompts``, else its class's), dropped with ``prompt_dropout``."""
    prompts = [
        sample.prompt if config.use_sample_prompts and sample.prompt
        else config.prompt_for(getattr(sample, "label", phase.label))
        for sample in chosen
    ]
    return ["" if rng.random() < config.prompt_dropout else prompt for prompt in prompts]


def _latents(inputs: LossInputs, chosen: list[Any], class_chosen: list[Any] | None,
             generator: torch.Generator) -> torch.Tensor:
    """Scaled latents drawn from the VAE posterior of the samples (cached, or encoded now), in float32."""
    data, prior_data, device = inputs.data, inputs.prior_data, inputs.device
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
            posterior = inputs.vae.encode(images.to(device, dtype=inputs.vae_dtype)).latent_dist
            mean, std = posterior.mean, posterior.std
        noise_for_latents = torch.randn(mean.shape, generator=generator).to(device, mean.dtype)
        latents = (mean + std * noise_for_latents) * inputs.vae.config.scaling_factor
    return latents.float()


def _weighted_loss(config: Any, inputs: LossInputs, chosen: list[Any], latents: torch.Tensor, timesteps: torch.Tensor,
                   prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The instance images' loss (lesion- and min-SNR-weighted as configured) plus the prior images' plain MSE."""
    weights = None
    if config.lesion_weight > 0:
        fractions = inputs.data.lesion_fractions(chosen, tuple(latents.shape[-2:]))
        weights = 1 + config.lesion_weight * fractions.to(inputs.device)
    batch = len(chosen)
    step_weights = min_snr_weights(inputs.noise_scheduler, timesteps[:batch], config.snr_gamma) if config.snr_gamma else None
    instance = weighted_mse(prediction[:batch], target[:batch], weights, step_weights)
    if inputs.prior_data is None:
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


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
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
