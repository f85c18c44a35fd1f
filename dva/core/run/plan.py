"""Stage 1, plan: what a run will do, decided before any model loads.

The inputs (files and folders walked with the modality's extensions), the output folder each gets,
this process's share of them, the checks that need no model, and the output folder held for the run.
Resuming is decided per image once the recipe's fingerprint is known (:func:`already_made`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dva.core import io, manifest, outputs
from dva.core.errors import ConfigError
from dva.core.registry import Recipe
from dva.core.run.jobs import ImageJob
from dva.core.shards import Shard, current_shard
from dva.core.tiles import NOT_TILED, parse_tile

MISSING_MASK = "--mask {mask}: no such file or folder; pass a mask image or a folder of masks named like the inputs."


@dataclass
class Plan:
    """The inputs of this process with their output keys, and what the run needs to know of them all."""

    out: Path
    modality: Any  # the modality spec that reads (and maybe writes) the inputs
    mask: str | None
    shard: Shard
    mine: list[tuple[Path, str]]  # this process's inputs, each with its output key
    positions: dict[str, int]  # each output key's place among all inputs: several processes merge in input order
    failed: list[ImageJob]  # inputs that do not exist or hold nothing (reported by process 0 only)

    @property
    def total(self) -> int:
        """Inputs this process reports on: its own and the failed ones."""
        return len(self.failed) + len(self.mine)


def plan_run(recipe: Recipe, inputs: list[str] | io.InputWalk, out: Path, catalogue: Any, mask: str | None) -> Plan:
    """The modality's files among ``inputs`` (paths, or their walk when the caller walked them already, excluding
    ``out``), their output keys and this process's shard; raises ConfigError before any model loads."""
    modality = catalogue.get("modality", recipe.modality)
    extensions = modality.extensions or io.SUPPORTED_EXTENSIONS
    walk = inputs if isinstance(inputs, io.InputWalk) else io.walk_inputs(inputs, exclude=[out], extensions=extensions)
    files, missing = walk.select(extensions)
    if not files and not missing:
        raise ConfigError("No inputs given; pass image files, DICOM files or folders.")
    if mask is not None and not Path(mask).exists():
        raise ConfigError(MISSING_MASK.format(mask=mask))
    check_samples(recipe, catalogue)
    check_tiling(recipe, catalogue)
    check_mask_given(recipe, catalogue, mask)
    shard = current_shard(recipe.device)
    keys = output_keys(files, extensions)
    outputs.refuse_inputs_in_outputs(files, out, keys)
    failed = [ImageJob(path, path.name, "failed", message) for path, message in missing] if shard.is_main else []
    return Plan(out, modality, mask, shard, shard.take(list(zip(files, keys))),
                {key: index for index, key in enumerate(keys)}, failed)


def check_samples(recipe: Recipe, catalogue: Any) -> None:
    """``--samples`` above 1 needs a prior that draws noise: a deterministic one would give K equal samples."""
    if recipe.samples > 1 and getattr(catalogue.get("prior", recipe.prior).resolve(), "deterministic", False):
        raise ConfigError(
            f"--samples {recipe.samples}: the prior '{recipe.prior}' is deterministic, so every sample would be the "
            "same; drop --samples or use a stochastic prior such as sdedit."
        )


def check_mask_given(recipe: Recipe, catalogue: Any, mask: str | None) -> None:
    """A prior that needs a lung mask for every image (its ``needs_mask``: a lung-zone ``--region``) is refused
    without ``--mask`` before any model loads (the prior is made, not loaded)."""
    if mask is not None:
        return
    prior = catalogue.get("prior", recipe.prior).create(**(recipe.prior_options or {}))
    why = getattr(prior, "needs_mask", None)
    if why:
        raise ConfigError(f"{why}, which needs --mask (a lung mask per input, or a folder of them).")


def check_tiling(recipe: Recipe, catalogue: Any) -> None:
    """``--tile``'s value, and a prior that can denoise in tiles (the tile's size is checked once the model loads)."""
    if parse_tile(getattr(recipe, "tile", "off")) is None:
        return
    if not getattr(catalogue.get("prior", recipe.prior).resolve(), "supports_tiling", False):
        raise ConfigError(NOT_TILED.format(prior=recipe.prior))


def output_keys(paths: list[Path], extensions: tuple[str, ...] = io.SUPPORTED_EXTENSIONS) -> list[str]:
    """Output folder names: the input's name less its extension (``brain.nii.gz`` -> ``brain``), made safe
    (:func:`dva.core.outputs.safe_key`) and unique with a short path hash where they collide."""
    keys = [outputs.safe_key(io.strip_extension(p, extensions), p) for p in paths]
    folded = [key.lower() for key in keys]  # case-insensitive file systems (macOS, Windows) fold names
    return [key if folded.count(key.lower()) == 1 else f"{key}-{outputs.path_tag(p)}" for key, p in zip(keys, paths)]


@contextlib.contextmanager
def holding_output_folder(plan: Plan) -> Iterator[None]:
    """The output folder, held for the whole run: one run at a time writes into it. Process 0 holds the
    lock for every process of the run; the others only make sure the folder exists."""
    if not plan.shard.is_main:
        outputs.ensure_output_folder(plan.out)
        yield
        return
    with outputs.claimed(plan.out):
        yield


def already_made(out: Path, job: ImageJob, recipe_fingerprint: str) -> bool:
    """Whether ``job``'s folder holds whole outputs of this input with this recipe: resuming skips it."""
    return bool(manifest.is_complete(out / job.key, job.sha256, recipe_fingerprint))
