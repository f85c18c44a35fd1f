"""Steps/s and peak GPU memory of the thesis fine-tuning recipe at full size, random weights.

The thesis trained SD v1-4 jointly with RadBERT (BERT-base). Speed and memory do not depend on weight
values, so this script builds the parts in memory from configs (no hub, no weights):

* UNet: diffusers ``UNet2DConditionModel`` with SD v1-4's configuration (859.5 M parameters,
  ``block_out_channels (320, 640, 1280, 1280)``, ``cross_attention_dim 768``, ``sample_size 64``);
* VAE: ``AutoencoderKL`` with SD v1-4's configuration (scaling factor 0.18215), frozen;
* text encoder: ``transformers.BertModel(BertConfig())``: BERT-base, hidden 768, trained (pooler frozen,
  as dva does).

and runs the step ``dva.finetune.trainer`` runs for DreamBooth with prior preservation (dva's
defaults: batch 2 instance + 2 class images, ``prior_weight 1``; ``--no-prior`` for 2 only): VAE
encode without gradients (VAE in the mixed-precision dtype), posterior sample, noise, random
timesteps, BERT states of 77 tokens (fixed random ids: no tokenizer needed), UNet forward under
accelerate's autocast, MSE (+ prior MSE), ``accelerator.backward``, gradient clipping at 1.0, AdamW (or
bitsandbytes ``AdamW8bit``) step. UNet and BERT weights stay float32 (mixed precision, as in dva).

Variants (each after the previous one's optimizer is freed; peak memory reset before each):

* baseline: no gradient checkpointing, ``torch.optim.AdamW``;
* gradient checkpointing (UNet and BERT);
* 8-bit Adam (skipped with a note when bitsandbytes is not installed);
* gradient checkpointing + 8-bit Adam;
* gradient checkpointing + cached latents (AdamW);
* gradient checkpointing + 8-bit Adam + cached latents (``cache_latents``: no VAE encode per step).

Reported per variant: steps/s over the timed steps (warm-up excluded), ``torch.cuda.max_memory_allocated``
and ``max_memory_reserved``, and whether the peak fits 24 GB (the target: the thesis recipe on a 24 GB card).

    python benchmarks/gpu_finetune.py                  # on a CUDA GPU (H100/A100): full size, bf16, 512 px
    python benchmarks/gpu_finetune.py --json gpu.json
    python benchmarks/gpu_finetune.py --tiny           # tiny configs on the CPU, 2 steps: a smoke test
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_run import write_results  # noqa: E402

TARGET_BYTES = 24 * 10**9  # "fits 24 GB": a 24 GB card (RTX 3090/4090, A10G) shows about 24e9 bytes
GIB = 2**30

SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD14_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
TINY_UNET = dict(  # dva.testing.tiny.tiny_unet
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, norm_num_groups=32,
)
TINY_VAE = dict(  # dva.testing.tiny.tiny_vae
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)  # dva's tiny BERT


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def build(tiny: bool, device: torch.device) -> tuple[Any, Any, Any, Any]:
    """UNet, VAE, BERT (random weights, float32, on ``device``) and the DDPM noise scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD14_UNET)).to(device)
    vae = AutoencoderKL(**(TINY_VAE if tiny else SD14_VAE)).to(device)
    bert = BertModel(BertConfig(**(TINY_BERT if tiny else {}))).to(device)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, steps_offset=1)
    return unet, vae, bert, scheduler


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def optimizer_for(parameters: list[torch.nn.Parameter], eight_bit: bool, lr: float) -> torch.optim.Optimizer:
    if eight_bit:
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(parameters, lr=lr)
    return torch.optim.AdamW(parameters, lr=lr)


def run_variant(name: str, parts: tuple[Any, Any, Any, Any], accelerator: Any, args: argparse.Namespace,
                checkpointing: bool, eight_bit: bool, cached: bool) -> dict[str, Any]:
    unet, vae, bert, scheduler = parts
    device = accelerator.device
    cuda = device.type == "cuda"
    weight_dtype = {"bf16": torch.bfloat16}.get(args.precision, torch.float32)
    if checkpointing:
        unet.enable_gradient_checkpointing()
        bert.gradient_checkpointing_enable()
    else:
        unet.disable_gradient_checkpointing()
        bert.gradient_checkpointing_disable()
    unet.train()
    bert.train()
    parameters = [p for module in (unet, bert) for p in module.parameters() if p.requires_grad]
    optimizer = optimizer_for(parameters, eight_bit, 5e-6)
    images_per_step = args.batch_size * (2 if args.prior else 1)
    resolution = args.resolution
    generator = torch.Generator("cpu").manual_seed(0)
    pixels = torch.rand((images_per_step, 3, resolution, resolution), generator=generator).mul(2).sub(1)
    pixels = pixels.to(device, dtype=weight_dtype)
    ids = torch.randint(1000, bert.config.vocab_size, (images_per_step, 77), generator=generator).to(device)
    mask = torch.ones_like(ids)
    cache = None
    if cached:  # what cache_latents does: the posterior once, before the first step
        with torch.no_grad():
            posterior = vae.encode(pixels).latent_dist
            cache = (posterior.mean, posterior.std)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with torch.no_grad():
            if cache is None:
                posterior = vae.encode(pixels).latent_dist
                mean, std = posterior.mean, posterior.std
            else:
                mean, std = cache
            latents = ((mean + std * torch.randn_like(mean)) * vae.config.scaling_factor).float()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with accelerator.autocast():
            states = bert(input_ids=ids, attention_mask=mask).last_hidden_state
            prediction = unet(noisy, timesteps, states).sample
        if args.prior:
            instance, prior = prediction.float().chunk(2)
            target, prior_target = noise.chunk(2)
            loss = F.mse_loss(instance, target) + F.mse_loss(prior, prior_target)
        else:
            loss = F.mse_loss(prediction.float(), noise)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    try:
        for _ in range(args.warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        result: dict[str, Any] = {
            "variant": name, "gradient_checkpointing": checkpointing, "adam_8bit": eight_bit, "cached_latents": cached,
            "steps_per_s": args.steps / seconds, "s_per_step": seconds / args.steps, "last_loss": loss,
        }
        if cuda:
            peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            result.update(peak_allocated_bytes=peak, peak_reserved_bytes=reserved, fits_24gb=reserved <= TARGET_BYTES)
        return result
    except torch.cuda.OutOfMemoryError as error:
        return {"variant": name, "gradient_checkpointing": checkpointing, "adam_8bit": eight_bit, "cached_latents": cached,
                "error": f"out of memory: {str(error).splitlines()[0]}"}
    finally:
        del optimizer, cache
        for module in (unet, bert):
            module.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU, 2 steps: a smoke test of the script")
    parser.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    parser.add_argument("--precision", choices=("bf16", "no"), default=None,
                        help="accelerate mixed precision (default bf16 on a GPU, no (float32) on the CPU, where "
                             "bf16 autocast is many times slower without bf16 hardware)")
    parser.add_argument("--batch-size", type=int, default=2, help="instance images per step (default 2, dva's)")
    parser.add_argument("--no-prior", dest="prior", action="store_false",
                        help="without prior preservation (default: on, as dva's prior_weight 1: 2x the UNet batch)")
    parser.add_argument("--resolution", type=int, help="image side in px (default 512; --tiny 64)")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default 10; --tiny 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant first (default 3; --tiny 1)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    args.resolution = args.resolution or (64 if args.tiny else 512)
    args.steps = args.steps or (2 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)

    quiet_libraries()
    from accelerate import Accelerator

    device_name = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.precision = args.precision or ("no" if device_name == "cpu" else "bf16")
    accelerator = Accelerator(mixed_precision=args.precision, cpu=device_name == "cpu")
    device = accelerator.device
    cuda = device.type == "cuda"
    try:
        import bitsandbytes  # noqa: F401

        have_8bit, note_8bit = True, None
    except ImportError:
        have_8bit, note_8bit = False, "bitsandbytes is not installed (pip install bitsandbytes): 8-bit Adam variants skipped"
    if have_8bit and not cuda:
        have_8bit, note_8bit = False, "8-bit Adam needs a CUDA GPU here: 8-bit Adam variants skipped on the CPU"

    began = time.perf_counter()
    unet, vae, bert, scheduler = build(args.tiny, device)
    unet.requires_grad_(True)
    bert.requires_grad_(True)
    bert.pooler.requires_grad_(False)  # as dva: the pooler never reaches the UNet
    vae.requires_grad_(False).eval()
    vae.to(dtype={"bf16": torch.bfloat16}.get(args.precision, torch.float32))
    built_s = time.perf_counter() - began
    sizes = {"unet_params": count(unet), "vae_params": count(vae), "bert_params": count(bert)}
    gpu = torch.cuda.get_device_name(device) if cuda else None
    print(f"device: {gpu or 'CPU'}; torch {torch.__version__}; precision {args.precision}; "
          f"{'tiny configs' if args.tiny else 'SD v1-4 UNet + VAE, BERT-base'} (random weights, built in {built_s:.1f} s)")
    print(f"parameters: UNet {sizes['unet_params'] / 1e6:.1f} M, VAE {sizes['vae_params'] / 1e6:.1f} M, "
          f"BERT {sizes['bert_params'] / 1e6:.1f} M (UNet and BERT trained)")
    print(f"step: batch {args.batch_size} instance{' + ' + str(args.batch_size) + ' class (prior preservation)' if args.prior else ''} "
          f"images, {args.resolution} px, 77 tokens; {args.warmup} warm-up + {args.steps} timed steps per variant", flush=True)

    variants = [
        ("baseline (AdamW)", False, False, False),
        ("gradient checkpointing", True, False, False),
        ("8-bit Adam", False, True, False),
        ("checkpointing + 8-bit Adam", True, True, False),
        ("checkpointing + cached latents", True, False, True),
        ("checkpointing + 8-bit Adam + cached latents", True, True, True),
    ]
    results = []
    parts = (unet, vae, bert, scheduler)
    for name, checkpointing, eight_bit, cached in variants:
        if eight_bit and not have_8bit:
            results.append({"variant": name, "skipped": note_8bit})
            continue
        results.append(run_variant(name, parts, accelerator, args, checkpointing, eight_bit, cached))
        print(f"  {name}: done", flush=True)

    baseline = results[0].get("steps_per_s")
    print()
    print("| variant | steps/s | s/step | vs baseline | peak allocated GiB | peak reserved GiB | fits 24 GB |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in results:
        if "skipped" in row or "error" in row:
            print(f"| {row['variant']} | – | – | – | – | – | {row.get('skipped') or row.get('error')} |")
            continue
        ratio = f"{row['steps_per_s'] / baseline:.2f}x" if baseline else "–"
        if cuda:
            memory = (f"{row['peak_allocated_bytes'] / GIB:.2f} | {row['peak_reserved_bytes'] / GIB:.2f} | "
                      f"{'yes' if row['fits_24gb'] else 'no'}")
        else:
            memory = "n/a (CPU) | n/a (CPU) | n/a"
        print(f"| {row['variant']} | {row['steps_per_s']:.3f} | {row['s_per_step']:.3f} | {ratio} | {memory} |")
    if note_8bit:
        print(f"\nnote: {note_8bit}")
    if not cuda:
        print("\nGPU numbers pending: no GPU in this run (CPU timings of tiny configs only check the script); "
              "run `python benchmarks/gpu_finetune.py` on an H100/A100.")
    if args.json:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "device": gpu or "cpu", "python": platform.python_version(), "torch": torch.__version__,
            "settings": {"tiny": args.tiny, "precision": args.precision, "batch_size": args.batch_size,
                         "prior_preservation": args.prior, "resolution": args.resolution, "steps": args.steps,
                         "warmup": args.warmup, "tokens": 77},
            "parameters": sizes, "build_s": built_s, "target_bytes": TARGET_BYTES, "note": note_8bit,
            "gpu_numbers_pending": not cuda, "results": results,
        }
        write_results(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
