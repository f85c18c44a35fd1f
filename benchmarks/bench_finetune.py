"""Steps/s of ``dva finetune`` (DreamBooth) with and without ``cache_latents``, measured in the same run.

Both sides call the real trainer, ``dva.finetune.trainer.train`` (strategy DreamBooth), on the same tiny dva model
(``dva.testing.tiny.make_tiny_dva_model``, random weights, the tiny BERT of the ``radbert`` encoder,
trained with the UNet as in the thesis recipe) and the same phantom data set
(``dva.datasets.phantoms.make_phantoms``, the COVID-19 Radiography layout, at the model's resolution):

* baseline: ``cache_latents=False``: every step encodes its images with the VAE.
* cached: ``cache_latents=True``: the data set is encoded once before the first step, and each step
  reads the cached posterior (same draws, so the same losses up to float rounding).

Each is run with prior preservation off (``prior_weight 0``) and on (``prior_weight 1``, class images
taken from a second phantom class through ``class_data`` so that no class images are generated).
Time per step comes from ``on_step`` timestamps from step ``--warmup`` to the last step, so model
loading, the one-off latent caching, the first steps and saving the model are all excluded; the
one-off caching time is reported apart. Configurations are interleaved (their order rotates each
repeat); the table shows the best and the median of the repeats, and the ratio is cached over uncached
steps/s of the same run.

    .venv/bin/python benchmarks/bench_finetune.py            # full run, a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_finetune.py --quick    # smoke run, ~20 s
    .venv/bin/python benchmarks/bench_finetune.py --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_run import ForeignLoad, write_results  # noqa: E402

TRAIN_CLASS = "Normal"
PRIOR_CLASS = "Lung Opacity"


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def machine() -> dict[str, Any]:
    import accelerate
    import diffusers
    import transformers

    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_once(model: Path, data: Path, out: Path, settings: dict[str, Any], cache: bool, prior: bool,
             catalogue: Any) -> dict[str, Any]:
    """One ``train`` call; steps/s from step ``warmup`` to the end, the caching time, every step's loss."""
    from dva.finetune.config import FinetuneConfig
    from dva.finetune.data import TrainingData
    from dva.finetune.trainer import train
    from dva.finetune.schedule import Phase

    steps, warmup = settings["steps"], settings["warmup"]
    config = FinetuneConfig(
        base_model=str(model), data=str(data), out=str(out), schedule=[Phase(TRAIN_CLASS, steps)], encoder=None,
        device="cpu", batch_size=settings["batch_size"], learning_rate=1e-4, train_text_encoder=True,
        prior_weight=1.0 if prior else 0.0, class_data=str(data / PRIOR_CLASS / "images") if prior else None,
        cache_latents=cache, checkpoint_every=0, validation_every=0, seed=0,
    )
    stamps: dict[int, float] = {}
    losses: list[float] = []

    def on_step(step: int, total: int, label: str, loss: float) -> None:
        stamps[step] = time.perf_counter()
        losses.append(loss)

    caching = [0.0]
    original = TrainingData.cache_latents

    def timed_cache(self: Any, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            original(self, *args, **kwargs)
        finally:
            caching[0] += time.perf_counter() - started

    TrainingData.cache_latents = timed_cache
    began = time.perf_counter()
    try:
        with ForeignLoad() as load:
            train(config, catalogue, on_step=on_step)
    finally:
        TrainingData.cache_latents = original
    wall = time.perf_counter() - began
    timed = steps - warmup
    seconds = stamps[steps] - stamps[warmup]
    return {"steps_per_s": timed / seconds, "s_per_step": seconds / timed, "cache_s": caching[0],
            "first_step_after_s": stamps[1] - began, "wall_s": wall, "losses": losses,
            "foreign_cpu_share": load.share or 0.0}


def summary(values: list[float]) -> dict[str, float]:
    return {"best": max(values), "median": statistics.median(values)}


def bench_size(root: Path, sample_size: int, settings: dict[str, Any], repeats: int, catalogue: Any) -> dict[str, Any]:
    from dva.datasets.phantoms import make_phantoms
    from dva.testing.tiny import make_tiny_dva_model

    resolution = sample_size * 2
    model = make_tiny_dva_model(root / f"model-{sample_size}", encoder="radbert", sample_size=sample_size)
    data = make_phantoms(root / f"phantoms-{resolution}", settings["images"], resolution, seed=0,
                         classes=[TRAIN_CLASS, PRIOR_CLASS])
    configs = [(prior, cache) for prior in (False, True) for cache in (False, True)]
    runs: dict[tuple[bool, bool], list[dict[str, Any]]] = {key: [] for key in configs}
    for repeat in range(repeats):
        shift = repeat % len(configs)
        for prior, cache in configs[shift:] + configs[:shift]:
            out = root / f"out-{sample_size}-{int(prior)}{int(cache)}-{repeat}"
            runs[(prior, cache)].append(run_once(model, data, out, settings, cache, prior, catalogue))
    rows = []
    for prior in (False, True):
        base, cached = runs[(prior, False)], runs[(prior, True)]
        ratios = [c["steps_per_s"] / b["steps_per_s"] for b, c in zip(base, cached)]
        loss_gap = max(abs(a - b) for b_run, c_run in zip(base, cached) for a, b in zip(b_run["losses"], c_run["losses"]))
        rows.append({
            "prior_preservation": prior,
            "unet_batch": settings["batch_size"] * (2 if prior else 1),
            "uncached_steps_per_s": summary([r["steps_per_s"] for r in base]),
            "cached_steps_per_s": summary([r["steps_per_s"] for r in cached]),
            "ratio_cached_vs_uncached": {"best": max(c["steps_per_s"] for c in cached) / max(b["steps_per_s"] for b in base),
                                         "median": statistics.median(ratios)},
            "cache_s_median": statistics.median(r["cache_s"] for r in cached),
            "max_loss_difference": loss_gap,
            "foreign_cpu_share_max": max(r["foreign_cpu_share"] for r in base + cached),
            "runs": {"uncached": base, "cached": cached},
        })
    return {"sample_size": sample_size, "resolution": resolution, "rows": rows}


def print_report(results: list[dict[str, Any]], settings: dict[str, Any], repeats: int, info: dict) -> None:
    print()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} CPUs, no GPU used, torch {info['torch']} "
          f"({info['torch_threads']} threads), diffusers {info['diffusers']}, CPU float32")
    print(f"settings: {settings}; steps/s over steps {settings['warmup']}..{settings['steps']}; "
          f"best and median of {repeats} repeats")
    for result in results:
        print()
        print(f"### {result['resolution']} px model (tiny dva model, sample_size {result['sample_size']}, tiny BERT trained)")
        print()
        print("| prior preservation | UNet batch | uncached steps/s (best) | cached steps/s (best) | cached/uncached (best) "
              "| uncached (median) | cached (median) | cached/uncached (median) | one-off caching s | max loss diff "
              "| other processes' CPU (max) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in result["rows"]:
            u, c, r = row["uncached_steps_per_s"], row["cached_steps_per_s"], row["ratio_cached_vs_uncached"]
            print(f"| {'on' if row['prior_preservation'] else 'off'} | {row['unet_batch']} | {u['best']:.2f} | "
                  f"{c['best']:.2f} | {r['best']:.2f}x | {u['median']:.2f} | {c['median']:.2f} | {r['median']:.2f}x | "
                  f"{row['cache_s_median']:.2f} | {row['max_loss_difference']:.1e} | "
                  f"{100 * row['foreign_cpu_share_max']:.0f}% |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: the 64 px model, few steps, 1 repeat (~20 s)")
    parser.add_argument("--json", type=Path, help="write all results (with every repeat) to this file")
    parser.add_argument("--steps", type=int, help="training steps per run (default 23; --quick 5)")
    parser.add_argument("--warmup", type=int, help="steps left out of the timing (default 3; --quick 1)")
    parser.add_argument("--repeats", type=int, help="runs per configuration (default 3; --quick 1)")
    parser.add_argument("--images", type=int, help="phantoms per class (default 16; --quick 4)")
    parser.add_argument("--batch-size", type=int, default=2, help="instance images per step (default 2, dva's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default torch's: one per core); 1 is far "
                        "steadier when other processes share the cores")
    parser.add_argument("--sample-sizes", type=int, nargs="+", help="tiny UNet sample sizes (default 32 64 -> 64, 128 px)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    from dva.core.plugins import load_catalogue

    settings = {
        "steps": args.steps or (5 if args.quick else 23),
        "warmup": args.warmup or (1 if args.quick else 3),
        "images": args.images or (4 if args.quick else 16),
        "batch_size": args.batch_size,
    }
    if not 0 < settings["warmup"] < settings["steps"]:
        parser.error("--warmup must be at least 1 and below --steps")
    repeats = args.repeats or (1 if args.quick else 3)
    sample_sizes = tuple(args.sample_sizes or ((32,) if args.quick else (32, 64)))
    info = machine()
    catalogue = load_catalogue(entry_points=False)
    load_before = load_average()
    began = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="dva-bench-finetune-") as tmp:
        for sample_size in sample_sizes:
            print(f"tiny dva model sample_size {sample_size} ({sample_size * 2} px), {settings['steps']} steps, "
                  f"{repeats} repeats", flush=True)
            results.append(bench_size(Path(tmp), sample_size, settings, repeats, catalogue))
    elapsed = time.perf_counter() - began
    print_report(results, settings, repeats, info)
    load_after = load_average()
    print(f"\nload average before {load_before}, after {load_after}; benchmark took {elapsed:.0f} s")
    busiest = max((row["foreign_cpu_share_max"] for result in results for row in result["rows"]), default=0.0)
    if busiest > 0.1:
        print(f"WARNING: other processes used up to {100 * busiest:.0f}% of the CPUs during some runs; when torch's "
              "threads and other processes share cores, a run can slow several-fold: compare the best columns, "
              "rerun, or pass --threads 1.")
    if args.json:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "settings": {**settings, "repeats": repeats, "sample_sizes": list(sample_sizes), "device": "cpu",
                         "dtype": "float32", "encoder": "radbert (tiny BERT, trained)",
                         "data": f"make_phantoms: {TRAIN_CLASS} (instance), {PRIOR_CLASS} (class_data)"},
            "load_average_before": load_before,
            "load_average_after": load_after,
            "elapsed_s": elapsed,
            "results": results,
        }
        write_results(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
