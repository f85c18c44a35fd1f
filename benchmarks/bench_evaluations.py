"""Map quality against UNet evaluations per image, on fresh phantom sets.

A UNet evaluation is one image through the UNet once: a UNet call on a batch doubled by classifier-free
guidance (guidance scale above 1) is two evaluations per image. The thesis' setting (sdedit 0.85, PNDM, 75
steps) makes 64 calls, i.e. 128 evaluations per image. This script measures, per prior, scheduler, step count,
strength, guidance, reference and number of samples, what the maps are worth for what they cost:

- the cost: UNet evaluations per image, as the run records it (``unet_evaluations`` in its manifest,
  ``dva.core.runtime.Runtime.unet_evaluations``; ``tests/test_bench_evaluations.py`` checks it against a
  counter wrapped around the UNet's forward);
- the quality (``bench_attribution.attribution_row``, on Normal and Lung Opacity phantoms with lung masks):
  pixel AUPRC and best Dice against the lesions, the null ratio, and the image-level AUROC from the raw map's
  99.5th percentile in the lungs. A calibrated score exists only when the model folder holds a calibration
  for that very recipe (the bundled model's matches one setting), so the frontier uses the raw-map score for
  every setting; a calibrated row is kept beside its raw row where there is one.

Coarse to fine: ``--plan sweep`` measures the whole grid on one seed; ``--plan confirm --from SWEEP.json``
re-measures the best settings at most ``BUDGET`` evaluations, the best at any cost, the ``tiny-phantom``
entry's former setting (``FORMER_ENTRY``) and the thesis' on another seed. Results are written after every setting, and a rerun with the same
``--json`` skips what that file already holds, so a killed run keeps what it measured.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluations.py --plan sweep --seed 6174 \\
        --json build/evaluations-6174.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluations.py --plan confirm --seed 1729 \\
        --from build/evaluations-6174.json --json build/evaluations-1729.json
    .venv/bin/python benchmarks/bench_evaluations.py --quick          # smoke run: 2 phantoms, two tiny settings
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attribution import attribution_row  # noqa: E402
from bench_run import load_average, machine, write_results  # noqa: E402

SWEEP_SEED = 6174  # phantom seeds no training, tuning or other benchmark uses
CONFIRM_SEED = 1729
BUDGET = 16  # evaluations per image: an eighth of the thesis' 128
ENTRY = "tiny-phantom"  # the registry entry the settings override (its prompt and model)
QUALITY = "auprc"  # what the frontier ranks by


@dataclass(frozen=True)
class Setting:
    """One sampling setting: everything that decides the map and its cost."""

    prior: str
    strength: float
    steps: int
    guidance_scale: float
    reference: str = "input"
    scheduler: str = "ddim"  # ddim-inversion runs DDIM whatever the scheduler; sdedit uses this one
    samples: int = 1

    @property
    def label(self) -> str:
        sampler = "" if self.prior == "ddim-inversion" else f"{self.scheduler} "
        text = f"{self.prior} {self.strength:g}, {sampler}{self.steps} steps, guidance {self.guidance_scale:g}"
        text += f", K = {self.samples}" if self.samples > 1 else ""
        return text + (" vs reconstruction" if self.reference == "reconstruction" else "")

    @property
    def family(self) -> str:
        """The curve this setting belongs to: everything but the step count."""
        return self.label.replace(f" {self.steps} steps,", "")

    def overrides(self) -> dict[str, Any]:
        return {"prior": self.prior, "strength": self.strength, "steps": self.steps, "scheduler": self.scheduler,
                "guidance_scale": self.guidance_scale, "reference": self.reference, "samples": self.samples}


def steps_for(strength: float, calls: int) -> int:
    """The fewest scheduler steps whose ``int(steps * strength)`` (the steps img2img and the inversion run) is
    ``calls``."""
    steps = 1
    while min(int(steps * strength), steps) < calls:
        steps += 1
    return steps


def ddim_inversion(strength: float, calls: int, guidance_scale: float = 4.0, reference: str = "reconstruction") -> Setting:
    return Setting("ddim-inversion", strength, steps_for(strength, calls), guidance_scale, reference)


def sdedit(scheduler: str, calls: int, strength: float = 0.55, guidance_scale: float = 4.0, reference: str = "input",
           samples: int = 1) -> Setting:
    return Setting("sdedit", strength, steps_for(strength, calls), guidance_scale, reference, scheduler, samples)


FORMER_ENTRY = Setting("ddim-inversion", 0.6, 50, 4.0, "reconstruction")  # the tiny-phantom entry's former recipe
THESIS = Setting("sdedit", 0.85, 75, 4.0, "input", "pndm")  # the thesis' sampling (64 calls): 128 evaluations


def sweep_plan() -> list[Setting]:
    """The grid over budgets of about 4, 8, 12, 16, 32, 64 and more, in tiers of interest (a run stopped early
    still holds every family's main points): the entry's family and the thesis' setting, then each family
    over its budgets, then the variants."""
    plan = [ddim_inversion(0.6, calls) for calls in (1, 2, 3, 4, 8, 16)] + [FORMER_ENTRY, THESIS]  # 4s evaluations
    plan += [sdedit("dpm-solver++", calls) for calls in (4, 8, 16, 32)]  # 2n
    plan += [sdedit(scheduler, calls) for scheduler in ("unipc", "ddim", "pndm") for calls in (8, 32)]
    plan += [ddim_inversion(0.6, calls, reference="input") for calls in (1, 2, 5, 10)]  # 3s
    plan += [ddim_inversion(0.6, calls, guidance_scale=1.0) for calls in (1, 2, 5, 10)]  # 3s, no CFG
    plan += [ddim_inversion(0.6, calls, guidance_scale=1.0, reference="input") for calls in (2, 4, 8, 16)]  # 2s
    plan += [ddim_inversion(strength, calls) for strength in (0.3, 0.45) for calls in (2, 4)]
    plan += refine_plan()  # added after the grid above had run: low strengths did best
    plan += [ddim_inversion(strength, calls) for strength in (0.75, 0.9) for calls in (2, 4)]
    plan += [ddim_inversion(0.6, 4, guidance_scale=scale) for scale in (2.0, 7.0)]
    plan += [sdedit("dpm-solver++", 4, samples=2), sdedit("dpm-solver++", 2, samples=4),
             sdedit("dpm-solver++", 5, reference="reconstruction"), sdedit("dpm-solver++", 8, samples=4),
             sdedit("dpm-solver++", 8, guidance_scale=1.0), sdedit("dpm-solver++", 8, strength=0.4)]
    plan += [ddim_inversion(strength, 16) for strength in (0.3, 0.45, 0.75, 0.9)]
    plan += [ddim_inversion(0.6, 30, reference="input"), ddim_inversion(0.6, 30, guidance_scale=1.0)]
    plan += [sdedit(scheduler, calls) for scheduler in ("unipc", "ddim", "pndm") for calls in (4, 16)]
    plan += [sdedit("dpm-solver++", 16, reference="reconstruction"),
             sdedit("dpm-solver++", 8, samples=4, reference="reconstruction")]
    return list(dict.fromkeys(plan))


def refine_plan() -> list[Setting]:
    """Around what the coarse grid found best (DDIM inversion at low strength against the reconstruction):
    strengths 0.15-0.35 at 1-4 calls each way, their guidance and reference, and the same at higher cost."""
    plan = [ddim_inversion(strength, calls) for strength in (0.2, 0.3, 0.15, 0.25, 0.35) for calls in (1, 2, 3, 4)]
    plan += [ddim_inversion(0.3, calls) for calls in (8, 16, 30)] + [ddim_inversion(0.2, calls) for calls in (8, 20)]
    plan += [ddim_inversion(0.3, 4, guidance_scale=scale) for scale in (1.0, 2.0, 7.0)]
    plan += [ddim_inversion(0.3, calls, reference="input") for calls in (2, 4)]
    return plan


def quick_plan() -> list[Setting]:
    return [ddim_inversion(0.6, 1), sdedit("dpm-solver++", 1, guidance_scale=1.0)]


def confirm_plan(sweep: dict, budget: int = BUDGET, best_within: int = 3, best_above: int = 3) -> list[Setting]:
    """From a sweep's results: its best settings within ``budget`` evaluations and above it (raw maps, by
    AUPRC), the entry's setting and the thesis'."""
    rows = sorted((r for r in sweep["rows"] if not r["calibrated"]), key=lambda r: -r[QUALITY])
    within = [r for r in rows if r["evaluations"] <= budget][:best_within]
    above = [r for r in rows if r["evaluations"] > budget][:best_above]
    chosen = [Setting(**r["recipe"]) for r in within + above] + [FORMER_ENTRY, THESIS]
    return list(dict.fromkeys(chosen))


def frontier(rows: list[dict]) -> list[dict]:
    """The settings no other setting beats on both counts: as good (AUPRC) for as few evaluations."""
    raw = sorted((r for r in rows if not r["calibrated"]), key=lambda r: (r["evaluations"], -r[QUALITY]))
    best, found = float("-inf"), []
    for row in raw:
        if row[QUALITY] > best:
            best = row[QUALITY]
            found.append(row)
    return found


def measure(setting: Setting, data: Path, work: Path, base: dict, catalogue: Any) -> list[dict]:
    """The setting's rows (raw, and calibrated where the model has a calibration for its recipe)."""
    rows = attribution_row(setting.label, setting.overrides(), data, work, base, catalogue, entry=ENTRY)
    for row in rows:
        row["calibrated"] = row["setting"].endswith(", calibrated")
        row["recipe"] = asdict(setting)
        row["family"] = setting.family
        row["evaluations"] = row["unet_evaluations"]
    return rows


def paired_gap(row: dict, best: dict) -> tuple[float, float]:
    """``row``'s AUPRC minus ``best``'s, as the mean and standard error of per-phantom differences (both
    settings ran on the same phantoms, so the phantoms' own spread cancels)."""
    import numpy as np

    names = sorted(set(row.get("auprc_per_image", {})) & set(best.get("auprc_per_image", {})))
    if len(names) < 2:
        return float("nan"), float("nan")
    differences = np.array([row["auprc_per_image"][n] - best["auprc_per_image"][n] for n in names])
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(len(names)))


def print_table(rows: list[dict], title: str, best: dict | None = None) -> None:
    print(f"\n{title}\n")
    print("| setting | UNet evaluations per image | pixel AUPRC | AUPRC - best (paired, ± s.e.) | best Dice | "
          "null ratio | image AUROC (p99.5) | s/image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gap, error = paired_gap(r, best) if best is not None else (float("nan"), float("nan"))
        print(f"| {r['setting']} | {r['evaluations']} | {r['auprc']:.3f} | {gap:+.3f} ± {error:.3f} | "
              f"{r['best_dice']:.3f} | {r['null_ratio']:.3f} | {r.get('image_auroc_p99.5', float('nan')):.3f} | "
              f"{r['seconds_per_image']:.2f} |")


def report(rows: list[dict], settings: dict) -> None:
    """Every setting and the frontier, each against the best raw-map setting at any cost."""
    rows = sorted(rows, key=lambda r: (r["evaluations"], r["setting"]))
    raw = [r for r in rows if not r["calibrated"]]
    best = max(raw, key=lambda r: r[QUALITY]) if raw else None
    print(f"\nmodel: {settings['model']}; {settings['n']} Normal and {settings['n']} Lung Opacity phantoms at "
          f"{settings['size']} px, seed {settings['seed']}; best: {best['setting'] if best else '-'}")
    print_table(rows, "All settings (image AUROC from the raw map's 99.5th percentile in the lungs):", best)
    print_table(frontier(rows), "The frontier: no setting measured here is better for as few evaluations:", best)


def previous_rows(path: Path | None, settings: dict) -> list[dict]:
    """What an earlier, interrupted run into the same output file already measured; exits (status 2) with one
    sentence when that file holds results of other settings (seed, phantoms, model), which it would overwrite
    or mix with these."""
    if path is None or not path.is_file():
        return []
    payload = json.loads(path.read_text())
    theirs = {k: v for k, v in payload.get("settings", {}).items() if k != "plan"}
    ours = {k: v for k, v in settings.items() if k != "plan"}
    if theirs != ours:
        differ = ", ".join(sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k)))
        raise SystemExit(f"--json {path} holds results measured with other settings ({differ}); pass another --json.")
    return payload["rows"]


def model_size(base: dict, catalogue: Any) -> int:
    """The model's image size in pixels (phantoms are made at it)."""
    import torch

    from dva.core.model_folder import inspect_model
    from dva.core.registry import load_entries, resolve
    from dva.core.runtime import load_diffusion_parts, model_resolution, pick_device

    recipe = resolve(load_entries(), catalogue, ENTRY, base)
    unet, vae, _ = load_diffusion_parts(inspect_model(recipe.model), pick_device("cpu"), torch.float32)
    return model_resolution(unet, vae)


def pooled_rows(payloads: list[dict]) -> list[dict]:
    """The raw-map rows of the settings every payload measured, merged: AUPRC per seed, and per-phantom AUPRCs
    under seed-prefixed names (so paired differences pool over all the phantoms)."""
    by_seed = [{r["setting"]: r for r in p["rows"] if not r["calibrated"]} for p in payloads]
    seeds = [p["settings"]["seed"] for p in payloads]
    merged = []
    for label in [label for label in by_seed[0] if all(label in rows for rows in by_seed[1:])]:
        rows = [rows[label] for rows in by_seed]
        merged.append({**rows[0], "auprc_by_seed": [r["auprc"] for r in rows],
                       "auprc": sum(r["auprc"] for r in rows) / len(rows),
                       "auprc_per_image": {f"{seed}/{name}": value for seed, r in zip(seeds, rows)
                                           for name, value in r.get("auprc_per_image", {}).items()}})
    return merged


def report_pooled(payloads: list[dict]) -> None:
    """The settings all payloads measured: AUPRC per seed, their mean, and the paired gap to the best mean."""
    rows = sorted(pooled_rows(payloads), key=lambda r: (r["evaluations"], r["setting"]))
    if not rows:
        return
    best = max(rows, key=lambda r: r[QUALITY])
    seeds = " / ".join(str(p["settings"]["seed"]) for p in payloads)
    print(f"\nSeeds pooled ({seeds}); best by mean AUPRC: {best['setting']}\n")
    print(f"| setting | UNet evaluations per image | AUPRC ({seeds}) | mean | mean - best (paired, ± s.e.) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        gap, error = paired_gap(r, best)
        print(f"| {r['setting']} | {r['evaluations']} | {' / '.join(f'{v:.3f}' for v in r['auprc_by_seed'])} | "
              f"{r['auprc']:.3f} | {gap:+.3f} ± {error:.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", choices=("sweep", "confirm"), default="sweep", help="the grid, or the confirmation of a sweep's best")
    parser.add_argument("--from", dest="sweep", type=Path, help="the sweep's JSON (for --plan confirm)")
    parser.add_argument("--seed", type=int, help=f"seed of the phantom set (default {SWEEP_SEED}; confirm: {CONFIRM_SEED})")
    parser.add_argument("--n", type=int, help="phantoms per class (default 10; --quick 2)")
    parser.add_argument("--model", help="model folder (default: the tiny-phantom entry's, the bundled tiny model)")
    parser.add_argument("--only", help="measure only the settings whose label contains this text")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 phantoms per class, two tiny settings")
    parser.add_argument("--json", type=Path, help="write the results here after every setting (and resume from it)")
    parser.add_argument("--report", type=Path, nargs="+",
                        help="measure nothing: print the tables of these results files (and, for several, the "
                             "settings all of them measured, seeds pooled)")
    args = parser.parse_args(argv)
    if args.report:
        payloads = [json.loads(path.read_text()) for path in args.report]
        for payload in payloads:
            report(payload["rows"], payload["settings"])
        if len(payloads) > 1:
            report_pooled(payloads)
        return 0
    if args.plan == "confirm" and not args.sweep:
        parser.error("--plan confirm needs --from SWEEP.json")

    from dva.core.plugins import load_catalogue
    from dva.core.runtime import quiet_libraries
    from dva.datasets.phantoms import make_phantoms

    quiet_libraries()
    catalogue = load_catalogue()
    seed = args.seed if args.seed is not None else (CONFIRM_SEED if args.plan == "confirm" else SWEEP_SEED)
    n = args.n or (2 if args.quick else 10)
    plan = quick_plan() if args.quick else (
        confirm_plan(json.loads(args.sweep.read_text())) if args.plan == "confirm" else sweep_plan())
    plan = [s for s in plan if args.only is None or args.only in s.label]
    base = {"device": "cpu", **({"model": args.model} if args.model else {})}
    size = model_size(base, catalogue)
    settings = {"entry": ENTRY, "model": args.model or f"the {ENTRY} entry's (the bundled tiny model)", "n": n,
                "seed": seed, "plan": "quick" if args.quick else args.plan, "size": size}
    rows = previous_rows(args.json, settings)
    done = {r["setting"] for r in rows}
    load_before, started = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data = make_phantoms(work / "phantoms", n, size, seed=seed)
        for setting in plan:
            if setting.label in done:
                continue
            measured = measure(setting, data, work, base, catalogue)
            rows += measured
            print(f"{setting.label}: {measured[0]['evaluations']} evaluations, AUPRC "
                  + ", calibrated ".join(f"{r['auprc']:.3f}" for r in measured), flush=True)
            if args.json:
                write_results(args.json, {"command": " ".join(sys.argv), "machine": machine(), "settings": settings,
                                          "rows": rows, "elapsed_s": time.perf_counter() - started})
    report(rows, settings)
    print(f"\n{time.perf_counter() - started:.0f} s; load average before {load_before}, after {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
