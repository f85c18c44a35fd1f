"""``dva compare``: every combination of encoders, priors, schedulers, strengths and guidance scales,
run on the same inputs with loaded components reused, each evaluated, in one table.

Every recipe is resolved before anything runs, so a misspelled name fails in a second; a combination
that fails while running (an encoder whose weights are missing, ...) is reported in its row and the
others go on. Each row names the encoder weights its run actually loaded. Rerun into the same folder,
each combination's run resumes (its completed images are reused) and the tables come out the same.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dva.core.errors import ConfigError
from dva.core.run import RunEvents
from dva.evaluate.evaluation import Evaluation, Settings, evaluate
from dva.evaluate.runs import read_run
from dva.evaluate.tables import Table

SUMMARY_COLUMNS = {
    "ssim": "SSIM", "ms_ssim": "MS-SSIM", "fid": "FID", "auroc": "AUROC", "auprc": "AUPRC",
    "dice_otsu": "Dice (Otsu)", "best_dice": "best Dice", "null_ratio": "null energy ratio",
    "image_auroc": "image AUROC",
}
LOWER_IS_BETTER = ("fid", "null_ratio")
RANK_MEASURES = tuple(SUMMARY_COLUMNS)  # what --rank-by accepts
NEEDS_REAL = ("fid", "auroc", "auprc", "dice_otsu", "best_dice", "null_ratio", "image_auroc")


def check_rank_by(measure: str | None, real: str | None) -> None:
    """``--rank-by``: a measure the comparison can make (those from lesions and classes need ``--real``)."""
    if measure is None:
        return
    if measure not in RANK_MEASURES:
        raise ConfigError(f"--rank-by {measure}: no such measure; choose one of {', '.join(RANK_MEASURES)}.")
    if measure in NEEDS_REAL and real is None:
        raise ConfigError(f"--rank-by {measure} needs the labelled dataset the inputs come from; give it with --real.")


def check_masks_given(recipes: list[Any], catalogue: Any, mask: str | None) -> None:
    """Every combination whose prior needs a lung mask (a lung-zone ``--region``) is refused without ``--mask``
    before anything runs (as ``dva run`` refuses it), not failed combination by combination."""
    from dva.core.run.plan import check_mask_given

    for recipe in recipes:
        check_mask_given(recipe, catalogue, mask)


@dataclass(frozen=True)
class Combination:
    """One point of the grid; None leaves the entry's (or model's) own choice."""

    encoder: str | None = None
    prior: str | None = None
    scheduler: str | None = None
    strength: float | None = None
    guidance_scale: float | None = None

    def overrides(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None}

    @property
    def label(self) -> str:
        parts = [self.encoder, self.prior, self.scheduler,
                 None if self.strength is None else f"strength {self.strength:g}",
                 None if self.guidance_scale is None else f"guidance {self.guidance_scale:g}"]
        return " · ".join(p for p in parts if p) or "entry defaults"

    @property
    def slug(self) -> str:
        """A folder name: the combination's values joined by underscores."""
        parts = [self.encoder, self.prior, self.scheduler,
                 None if self.strength is None else f"s{self.strength:g}",
                 None if self.guidance_scale is None else f"g{self.guidance_scale:g}"]
        return "_".join(p.replace("/", "-") for p in parts if p) or "defaults"


def grid(encoders: Sequence[str], priors: Sequence[str], schedulers: Sequence[str], strengths: Sequence[float],
         guidance_scales: Sequence[float]) -> list[Combination]:
    """The cartesian product; an empty axis keeps the entry's value."""
    axes = [list(axis) or [None] for axis in (encoders, priors, schedulers, strengths, guidance_scales)]
    return [Combination(*values) for values in itertools.product(*axes)]


@dataclass
class Outcome:
    """A combination's run folder and its evaluation, or why it failed."""

    combination: Combination
    run: Path
    evaluation: Evaluation | None = None
    error: str | None = None
    seconds_per_image: float = math.nan
    images: int = 0
    summary: dict[str, float] = field(default_factory=dict)
    model: str | None = None  # the model its run loaded
    encoder: dict[str, Any] | None = None  # the encoder its run loaded, and whether the model was trained with it


def summarise(evaluation: Evaluation) -> dict[str, float]:
    """One number per measure for the comparison: means over images, FID over the generated sets."""
    rows = evaluation.per_image
    summary: dict[str, float] = {}
    for key in SUMMARY_COLUMNS:
        values = [float(row[key]) for row in rows if isinstance(row.get(key), (int, float))]
        values = [v for v in values if not math.isnan(v)]
        if values:
            summary[key] = float(np.mean(values))
    fids = [row[2] for table in evaluation.tables if table.key in ("6.2", "8.1") for row in table.rows[:1 if
            table.key == "8.1" else None]]
    if fids:
        summary["fid"] = float(np.mean(fids))
    null = next((table for table in evaluation.tables if table.key == "null-test"), None)
    if null is not None and len(null.rows) > 1 and null.rows[0][2] > 0:
        others = [row[2] for row in null.rows[1:]]
        summary["null_ratio"] = float(null.rows[0][2] / np.mean(others))
    image_level = evaluation.summary.get("image_level") or {}
    preferred = image_level.get("methods", {}).get(image_level.get("preferred"), {})
    if isinstance(preferred.get("auroc"), float) and not math.isnan(preferred["auroc"]):
        summary["image_auroc"] = preferred["auroc"]  # healthy against the abnormal classes, by the preferred score
    return summary


def image_score_method(evaluation: Evaluation | None) -> str | None:
    """Which image-level score a comparison row's image AUROC comes from (``record``, ``p99.5``, ...)."""
    return None if evaluation is None else (evaluation.summary.get("image_level") or {}).get("preferred")


def resolve_all(combinations: list[Combination], entry: str, registries: Sequence[str], catalogue: Any,
                common: dict[str, Any], options: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[Any]:
    """Every combination's recipe, resolved once (and so checked) before any runs: the entry, then the flags
    every combination shares (``common``), then the combination's own values and its components' own options.

    ``options`` gives components their own options by kind and name (``{"encoder": {"radbert": {"path":
    ...}}, "prior": {"controlnet-canny": {...}}}``): each applies to the combinations that use that
    component, so no encoder is ever loaded from another's path. A name no combination uses is a
    ConfigError (a typo would otherwise be ignored).
    """
    from dva.core.registry import Draft, load_entries

    entries = load_entries(registries)
    options = options or {}
    used: set[tuple[str, str]] = set()
    recipes = []
    for combination in combinations:
        draft = Draft.of(entries, entry).apply({**common, **combination.overrides()})
        own = {kind: by_name[draft.component(kind)] for kind, by_name in options.items()
               if draft.component(kind) in by_name}
        used.update((kind, draft.component(kind)) for kind in own)
        recipes.append(draft.apply({f"{kind}_options": values for kind, values in own.items()}).build(catalogue))
    for kind, by_name in options.items():
        for name in by_name:
            if (kind, name) not in used:
                compared = sorted({str(getattr(recipe, kind)) for recipe in recipes})
                raise ConfigError(
                    f"Options are given for the {kind} '{name}', but no combination uses it (the {kind}s compared: "
                    f"{', '.join(compared)}); name it in --{kind}s, or correct the name."
                )
    return recipes


def run_all(combinations: list[Combination], recipes: list[Any], inputs: Any, out: Path, catalogue: Any,
            dataset: Any, settings: Settings, mask: str | None = None,
            on_combination: Callable[[int, Combination], None] = lambda index, combination: None,
            run_options: dict[str, Any] | None = None,
            on_loaded: Callable[[int, Any], None] = lambda index, runtime: None) -> list[Outcome]:
    """Run and evaluate each combination into ``out/runs/<slug>``, loading each model part once.

    ``inputs`` are paths, or their walk (``dva.core.io.walk_inputs``, excluding ``out``), walked once for all.

    A folder that holds a completed run of the same recipe is resumed (``dva run`` skips its completed
    images), so a second call gives the same outcomes. ``on_loaded`` gets each combination's loaded
    components (the encoder it really loaded, whether the model was trained with it).
    """
    from dva.core.run import run
    from dva.core.runtime import reuse_components

    outcomes = []
    with reuse_components():
        for index, (combination, recipe) in enumerate(zip(combinations, recipes)):
            on_combination(index, combination)
            outcome = Outcome(combination, out / "runs" / combination.slug)
            events = _OutcomeEvents(outcome, index, on_loaded)
            started = time.perf_counter()
            try:
                result = run(recipe, inputs, outcome.run, catalogue, mask=mask, events=events, **(run_options or {}))
                run_outputs = read_run(outcome.run)
                outcome.images = len(run_outputs.images)
                outcome.seconds_per_image = seconds_per_image(run_outputs.images, time.perf_counter() - started)
                outcome.evaluation = evaluate(dataset, [run_outputs], settings, catalogue)
                outcome.summary = summarise(outcome.evaluation)
                if result.count("failed"):
                    outcome.error = f"{result.count('failed')} inputs failed (see {outcome.run}/manifest.json)"
            except Exception as error:  # a failed combination is reported; the others go on
                outcome.error = str(error).splitlines()[0] if str(error) else type(error).__name__
            outcomes.append(outcome)
    return outcomes


class _OutcomeEvents(RunEvents):
    """The run of combination ``index``: the model and encoder it really loaded go into its outcome, and
    to ``on_loaded``."""

    def __init__(self, outcome: Outcome, index: int, on_loaded: Callable[[int, Any], None]) -> None:
        self.outcome, self.index, self.on_loaded = outcome, index, on_loaded

    def loaded(self, runtime: Any) -> None:
        choice = runtime.encoder_choice
        self.outcome.model = runtime.source.location
        self.outcome.encoder = None if choice is None else choice.as_dict()
        self.on_loaded(self.index, runtime)


def seconds_per_image(images: list[Any], elapsed: float) -> float:
    """The mean time each image took when it was made (reading, sampling, writing), from its record.json,
    so a resumed comparison reports the same times; ``elapsed / images`` where a record lacks it."""
    seconds = []
    for image in images:
        try:
            seconds.append(float(json.loads((image.folder / "record.json").read_text())["seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            return elapsed / max(len(images), 1)
    return float(np.mean(seconds)) if seconds else math.nan


def ranking(outcomes: list[Outcome], measure: str) -> list[int]:
    """The outcomes' indices, best first by ``measure`` (lower first for FID and the null ratio); failed
    combinations and those without the measure come last, in their own order."""
    sign = 1.0 if measure in LOWER_IS_BETTER else -1.0

    def key(index: int) -> tuple[int, float, int]:
        outcome = outcomes[index]
        value = outcome.summary.get(measure, math.nan)
        if outcome.error is not None or not isinstance(value, (int, float)) or math.isnan(value):
            return (1, 0.0, index)
        return (0, sign * float(value), index)

    return sorted(range(len(outcomes)), key=key)


def ranks(outcomes: list[Outcome], measure: str) -> dict[int, int | None]:
    """Each outcome's rank by ``measure``: 1 + how many are strictly better (ties share a rank); None for a
    failed combination or one without the measure."""
    sign = 1.0 if measure in LOWER_IS_BETTER else -1.0
    values = {index: sign * float(o.summary[measure]) for index, o in enumerate(outcomes)
              if o.error is None and isinstance(o.summary.get(measure), (int, float))
              and not math.isnan(o.summary[measure])}
    return {index: (1 + sum(other < values[index] for other in values.values()) if index in values else None)
            for index in range(len(outcomes))}


def comparison_table(outcomes: list[Outcome], rank_by: str | None = None) -> Table:
    """One row per combination: its values, images, s/image, the measures, the encoder weights it loaded
    (name and location, and whether the model was trained with them), and its status.

    With ``rank_by`` (a key of :data:`SUMMARY_COLUMNS`) the rows are ordered best first, a ``rank`` column
    comes first, and the best row is marked."""
    measured = [key for key in SUMMARY_COLUMNS if any(key in o.summary for o in outcomes) or key == rank_by]
    axes = [name for name in ("encoder", "prior", "scheduler", "strength", "guidance_scale")
            if len({getattr(o.combination, name) for o in outcomes}) > 1 or getattr(outcomes[0].combination, name)]
    order = list(range(len(outcomes))) if rank_by is None else ranking(outcomes, rank_by)
    ranked = rank_by is not None
    rank_of = ranks(outcomes, rank_by) if ranked else {}
    title = "Comparison of combinations"
    if ranked:
        better = "lower" if rank_by in LOWER_IS_BETTER else "higher"
        title += f", ranked by {SUMMARY_COLUMNS[rank_by]} ({better} is better)"
    table = Table("comparison", title,
                  [*(["rank"] if ranked else []), *axes, "images", "s/image", *(SUMMARY_COLUMNS[k] for k in measured),
                   "encoder loaded", "encoder source", "trained pair", "status"])
    for index in order:
        outcome = outcomes[index]
        values = [getattr(outcome.combination, name) for name in axes]
        encoder = outcome.encoder or {}
        paired = {True: "yes", False: "NO"}.get(encoder.get("paired"), "")
        rank = ([rank_of[index] or "-"]) if ranked else []
        table.rows.append([*rank, *values, outcome.images, outcome.seconds_per_image,
                           *(outcome.summary.get(k, math.nan) for k in measured),
                           encoder.get("encoder", ""), encoder.get("source") or "", paired, outcome.error or "ok"])
    if ranked:
        best = outcomes[order[0]]
        if table.rows[0][0] == 1:
            table.marked = 0
            tied = sum(rank == 1 for rank in rank_of.values()) - 1
            table.notes.append(f"Best by {SUMMARY_COLUMNS[rank_by]}: {best.combination.label} "
                               f"({best.summary[rank_by]:.4f})" + (f", tied with {tied} more." if tied else "."))
        else:
            table.notes.append(f"No combination has {SUMMARY_COLUMNS[rank_by]}: nothing is ranked.")
        methods = sorted({m for m in (image_score_method(o.evaluation) for o in outcomes) if m})
        if rank_by == "image_auroc" and methods:
            table.notes.append(f"image AUROC: healthy against the abnormal classes, by the {', '.join(methods)} score.")
    return table
