"""Pairs per second of dva's SSIM + MS-SSIM against pytorch-msssim called one pair at a time, same run.

Inputs: real chest X-rays (``dva/samples/cxr-covid-sample``, with their V7 Labs lung masks)
resized to each side, else synthetic chest-like images with elliptic lungs; each "counterfactual" is
the scan with a smooth opacity removed inside the lungs plus a little noise. All images are float32
intensities in [0, 1], data range 1.

Configurations (every one computes SSIM and MS-SSIM of every pair unless its name says otherwise):

* ``pytorch-msssim ssim / ms_ssim, 1 pair/call``: what a notebook does, ``ssim(x, y)`` and
  ``ms_ssim(x, y)`` on (1, 1, H, W) tensors, ``.item()`` each; the two halves are also timed alone.
* ``pytorch-msssim, batch B``: the same two calls on (B, 1, H, W) tensors.
* ``dva similarity, 1 pair/call`` and ``dva similarity_batch, batch B`` (unmasked, and with the lung
  masks): dva's validation, conversion and scoring included.

Configurations are interleaved (their order rotates each repeat); the table shows the best and the
median repeat and every ratio is against the one-pair-at-a-time pytorch-msssim baseline measured in
this same run. A check compares dva's values with pytorch-msssim's on every pair.

    .venv/bin/python benchmarks/bench_similarity.py                 # 32 pairs at 256 and 512 px
    .venv/bin/python benchmarks/bench_similarity.py --quick         # smoke run, seconds
    .venv/bin/python benchmarks/bench_similarity.py --threads 1 --json results.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import ForeignLoad, Quiet, load_average, machine, write_results  # noqa: E402

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "dva" / "samples" / "cxr-covid-sample"  # bundled X-rays


# -- inputs -----------------------------------------------------------------------------------------


def real_scans(side: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scan, lung mask) of every sample X-ray with a V7 Labs mask, resized to side x side."""
    from dva.core.io import read_mask, read_scan, resize

    pairs = []
    for mask_path in sorted((SAMPLE_DIR / "masks_v7labs").glob("*")) if SAMPLE_DIR.is_dir() else []:
        image_path = SAMPLE_DIR / "images" / mask_path.name
        if not image_path.is_file():
            continue
        scan = read_scan(image_path)
        lungs = read_mask(mask_path, scan.size)
        pairs.append((np.clip(resize(scan.pixels, (side, side)), 0, 1),
                      resize(lungs.astype(np.float32), (side, side), nearest=True) > 0.5))
    return pairs


def synthetic_scan(side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A chest-like image with two elliptic lungs, and the lung mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    lungs = (((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1) | (((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    image = 0.75 - 0.4 * lungs + 0.05 * np.sin(20 * y + seed) + 0.02 * rng.standard_normal((side, side))
    return np.clip(image, 0, 1).astype(np.float32), lungs


def make_pairs(side: int, count: int) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], str]:
    """``count`` (scan, counterfactual, lungs) triples; the counterfactual removes a blob inside the lungs."""
    scans = real_scans(side)
    kind = f"{len(scans)} real chest X-rays with V7 Labs lung masks (cycled)" if scans else "synthetic"
    if not scans:
        scans = [synthetic_scan(side, seed) for seed in range(count)]
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    triples = []
    for index in range(count):
        scan, lungs = scans[index % len(scans)]
        rows, cols = np.nonzero(lungs) if lungs.any() else (np.array([side // 2]), np.array([side // 2]))
        centre = rng.integers(len(rows))
        blob = np.exp(-((y - rows[centre] / side) ** 2 + (x - cols[centre] / side) ** 2) / 0.004)
        counterfactual = scan - 0.25 * blob * lungs + 0.01 * rng.standard_normal(scan.shape)
        triples.append((scan.astype(np.float32), np.clip(counterfactual, 0, 1).astype(np.float32), lungs))
    return triples, f"{kind}, {side}x{side} float32"


# -- the configurations -----------------------------------------------------------------------------


def pytorch_one_by_one(which: str) -> Callable[[list], None]:
    from pytorch_msssim import ms_ssim, ssim

    def run(triples: list) -> None:
        for scan, counterfactual, _ in triples:
            x, y = torch.from_numpy(scan)[None, None], torch.from_numpy(counterfactual)[None, None]
            if which in ("both", "ssim"):
                ssim(x, y, data_range=1.0).item()
            if which in ("both", "ms_ssim"):
                ms_ssim(x, y, data_range=1.0).item()

    return run


def pytorch_batched(batch: int) -> Callable[[list], None]:
    from pytorch_msssim import ms_ssim, ssim

    def run(triples: list) -> None:
        for first in range(0, len(triples), batch):
            chunk = triples[first : first + batch]
            x = torch.from_numpy(np.stack([t[0] for t in chunk]))[:, None]
            y = torch.from_numpy(np.stack([t[1] for t in chunk]))[:, None]
            ssim(x, y, data_range=1.0, size_average=False).tolist()
            ms_ssim(x, y, data_range=1.0, size_average=False).tolist()

    return run


def dva_one_by_one(triples: list) -> None:
    from dva.metrics.similarity import similarity

    for scan, counterfactual, _ in triples:
        similarity(scan, counterfactual)


def dva_batched(batch: int, masked: bool) -> Callable[[list], None]:
    from dva.metrics.similarity import similarity_batch

    def run(triples: list) -> None:
        similarity_batch([(s, c, m if masked else None) for s, c, m in triples], batch_size=batch)

    return run


def configurations(batch: int) -> list[tuple[str, Callable[[list], None]]]:
    baseline = "pytorch-msssim ssim + ms_ssim, 1 pair/call"
    return [
        (baseline, pytorch_one_by_one("both")),
        ("pytorch-msssim ssim only, 1 pair/call", pytorch_one_by_one("ssim")),
        ("pytorch-msssim ms_ssim only, 1 pair/call", pytorch_one_by_one("ms_ssim")),
        (f"pytorch-msssim ssim + ms_ssim, batch {batch}", pytorch_batched(batch)),
        ("dva similarity, 1 pair/call", dva_one_by_one),
        (f"dva similarity_batch, batch {batch}", dva_batched(batch, masked=False)),
        (f"dva similarity_batch with lung masks, batch {batch}", dva_batched(batch, masked=True)),
    ]


def largest_difference(triples: list) -> dict[str, float]:
    """Largest |dva - pytorch-msssim| over the pairs, for SSIM and MS-SSIM (unmasked, batched)."""
    from pytorch_msssim import ms_ssim, ssim

    from dva.metrics.similarity import similarity_batch

    ours = similarity_batch([(s, c, None) for s, c, _ in triples])
    ssim_diff = ms_diff = 0.0
    for (scan, counterfactual, _), scores in zip(triples, ours):
        x, y = torch.from_numpy(scan)[None, None], torch.from_numpy(counterfactual)[None, None]
        ssim_diff = max(ssim_diff, abs(scores.ssim - ssim(x, y, data_range=1.0).item()))
        ms_diff = max(ms_diff, abs(scores.ms_ssim - ms_ssim(x, y, data_range=1.0).item()))
    return {"ssim": ssim_diff, "ms_ssim": ms_diff}


def bench_side(side: int, count: int, batch: int, repeats: int, quiet: Quiet) -> dict[str, Any]:
    triples, kind = make_pairs(side, count)
    configs = configurations(batch)
    for _, run in configs:  # warm-up: imports, allocator, oneDNN kernels
        run(triples[: min(batch, len(triples))])
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    for repeat in range(repeats):
        shift = repeat % len(configs)
        for name, run in configs[shift:] + configs[:shift]:
            quiet.wait()
            with ForeignLoad() as foreign:
                began = time.perf_counter()
                run(triples)
                seconds = time.perf_counter() - began
            samples[name].append({"seconds": seconds, "foreign_cpu_share": foreign.share or 0.0})
        print(f"  [{side} px] repeat {repeat + 1}/{repeats} done", flush=True)
    rows = []
    for name, _ in configs:
        seconds = [sample["seconds"] for sample in samples[name]]
        rows.append({
            "config": name,
            "pairs_per_s": {"best": count / min(seconds), "median": count / statistics.median(seconds)},
            "foreign_cpu_share_max": max(sample["foreign_cpu_share"] for sample in samples[name]),
            "samples": samples[name],
        })
    base = rows[0]["pairs_per_s"]
    for row in rows:
        row["speed_vs_baseline"] = {k: row["pairs_per_s"][k] / base[k] for k in ("best", "median")}
    return {"side": side, "pairs": count, "inputs": kind, "rows": rows, "max_abs_difference": largest_difference(triples)}


def print_report(results: list[dict[str, Any]], info: dict[str, Any], repeats: int) -> None:
    print()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} CPUs, no GPU used, torch {info['torch']} "
          f"({info['torch_threads']} threads), pytorch-msssim {info['pytorch_msssim']}")
    for result in results:
        print()
        print(f"### {result['side']} px, {result['pairs']} pairs ({result['inputs']}); best and median of {repeats} repeats")
        print()
        print("| configuration | pairs/s (best) | pairs/s (median) | speed vs baseline (best) | (median) | other processes' CPU (max) |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in result["rows"]:
            rate, ratio = row["pairs_per_s"], row["speed_vs_baseline"]
            print(f"| {row['config']} | {rate['best']:.1f} | {rate['median']:.1f} | {ratio['best']:.2f} | "
                  f"{ratio['median']:.2f} | {100 * row['foreign_cpu_share_max']:.0f}% |")
        diff = result["max_abs_difference"]
        print(f"\nlargest |dva - pytorch-msssim| over the pairs: SSIM {diff['ssim']:.2g}, MS-SSIM {diff['ms_ssim']:.2g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 pairs at 192 px, 1 repeat")
    parser.add_argument("--json", type=Path, help="write all results (with every repeat) to this file")
    parser.add_argument("--pairs", type=int, help="image pairs per size (default 32; --quick 4)")
    parser.add_argument("--sides", type=int, nargs="+", help="image sides in px (default 256 512; --quick 192)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of the batched rows (default 16)")
    parser.add_argument("--repeats", type=int, help="timed repeats per configuration (default 3; --quick 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds in all the benchmark may wait for other processes to leave the CPUs idle "
                             "(default 60; --quick 0)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    count = args.pairs or (4 if args.quick else 32)
    sides = tuple(args.sides or ((192,) if args.quick else (256, 512)))
    repeats = args.repeats or (1 if args.quick else 3)
    quiet = Quiet(args.max_wait if args.max_wait is not None else (0.0 if args.quick else 60.0))
    info = {**machine(), "pytorch_msssim": version("pytorch-msssim")}
    load_before = load_average()
    began = time.perf_counter()
    results = []
    for side in sides:
        print(f"{side} px, {count} pairs, {repeats} repeats", flush=True)
        results.append(bench_side(side, count, args.batch_size, repeats, quiet))
    elapsed = time.perf_counter() - began
    print_report(results, info, repeats)
    load_after = load_average()
    print(f"\nload average before {load_before}, after {load_after}; benchmark took {elapsed:.0f} s")
    busiest = max(row["foreign_cpu_share_max"] for result in results for row in result["rows"])
    if busiest > 0.1:
        print(f"WARNING: other processes used up to {100 * busiest:.0f}% of the CPUs during some samples; "
              "the medians are noisier than usual (the best-of column is the more robust one).")
    if args.json:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "settings": {"pairs": count, "sides": list(sides), "batch_size": args.batch_size, "repeats": repeats,
                         "data_range": 1.0, "device": "cpu", "dtype": "float32"},
            "load_average_before": load_before,
            "load_average_after": load_after,
            "elapsed_s": elapsed,
            "results": results,
        }
        write_results(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
