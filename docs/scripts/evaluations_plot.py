"""docs/images/evaluations.png: map quality (pixel AUPRC) against UNet evaluations per image.

One line per family of settings (a prior, strength, guidance, reference and sampler, over step counts) from the
sweep's JSON, the frontier as a dashed step line, and the confirmation seed's settings as open markers.
Run: .venv/bin/python docs/scripts/evaluations_plot.py build/evaluations-6174.json build/evaluations-1729.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_evaluations import BUDGET, frontier  # noqa: E402

from dva.core.io import atomic_write_bytes  # noqa: E402

THESIS_EVALUATIONS = 128


def raw_rows(path: Path) -> tuple[list[dict], int]:
    payload = json.loads(path.read_text())
    return [r for r in payload["rows"] if not r["calibrated"]], payload["settings"]["seed"]


def draw(sweep: Path, confirm: Path | None, out: Path) -> None:
    rows, seed = raw_rows(sweep)
    figure, axes = plt.subplots(figsize=(9, 4.8), dpi=100)
    families: dict[str, list[dict]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    others = []
    for family, members in sorted(families.items()):
        if len(members) < 3:
            others += members
            continue
        members.sort(key=lambda r: r["evaluations"])
        style = "-" if family.startswith("ddim-inversion") else ":"
        axes.plot([r["evaluations"] for r in members], [r["auprc"] for r in members], style, marker="o",
                  markersize=4, linewidth=1.2, label=family)
    axes.scatter([r["evaluations"] for r in others], [r["auprc"] for r in others], s=14, color="0.55",
                 label="other settings (strength, guidance, K, reference)", zorder=3)
    best = frontier(rows)
    axes.step([r["evaluations"] for r in best], [r["auprc"] for r in best], "--", where="post", color="black",
              linewidth=1, label=f"frontier (seed {seed})")
    if confirm is not None:
        confirmed, confirm_seed = raw_rows(confirm)
        axes.scatter([r["evaluations"] for r in confirmed], [r["auprc"] for r in confirmed], s=40,
                     facecolors="none", edgecolors="crimson", label=f"confirmed on seed {confirm_seed}", zorder=4)
    axes.axvline(BUDGET, color="green", linewidth=0.8)
    axes.axvline(THESIS_EVALUATIONS, color="0.3", linewidth=0.8)
    along = axes.get_xaxis_transform()  # x in data, y in axes fractions
    axes.text(BUDGET * 1.05, 0.98, f"{BUDGET}: 1/8 of the thesis", transform=along, fontsize=8, va="top", color="green")
    axes.text(THESIS_EVALUATIONS * 0.95, 0.98, "thesis: 128", transform=along, fontsize=8, va="top", ha="right",
              color="0.3")
    axes.set_xscale("log", base=2)
    ticks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.set_xlabel("UNet evaluations per image (guidance batch, inversion, reconstruction and samples counted)")
    axes.set_ylabel("pixel AUPRC (Lung Opacity phantoms)")
    axes.set_title("Map quality against UNet evaluations, bundled tiny model, 64 px phantoms", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(out, buffer.getvalue())
    print(f"written {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="bench_evaluations.py --plan sweep's JSON")
    parser.add_argument("confirm", type=Path, nargs="?", help="bench_evaluations.py --plan confirm's JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "evaluations.png")
    args = parser.parse_args(argv)
    draw(args.sweep, args.confirm, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
