"""``--tile``: full-resolution counterfactuals from overlapping model-sized tiles, the settings' side.

What a tiled run does (MultiDiffusion, Bar-Tal et al. 2023) is the priors' business
(:mod:`dva.components.tiling`); this module reads the setting, decides the size each image is worked at,
and carries the choice to the prior in :class:`dva.core.contracts.GenerateRequest` as a :class:`Tiling`.
Importing it imports neither torch nor numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dva.core.errors import ConfigError

TILE_CHOICES = "off, auto (the model's own size) or a tile side in pixels"
NOT_TILED = ("--tile: the prior '{prior}' cannot denoise in tiles; use sdedit, ddim-inversion or controlnet-canny, or "
             "drop --tile.")


@dataclass(frozen=True)
class Tiling:
    """How a prior denoises a full-resolution image: square tiles of ``tile`` pixels whose neighbours share
    ``overlap`` of their side, ``batch`` tiles per UNet call (memory is bounded by it), on a latent grid of
    ``latent_factor`` pixels per latent cell."""

    tile: int
    overlap: float
    batch: int
    latent_factor: int

    @property
    def latent_tile(self) -> int:
        """A tile's side in latent cells."""
        return self.tile // self.latent_factor

    @property
    def latent_stride(self) -> int:
        """Latent cells between the starts of neighbouring tiles (at least one)."""
        return max(1, round(self.latent_tile * (1 - self.overlap)))


def parse_tile(value: Any) -> int | None:
    """``--tile``'s value as a tile side in pixels: None for ``off``, 0 for ``auto``; ConfigError otherwise."""
    text = str(value).strip().lower()
    if text in ("off", "", "none", "false"):
        return None
    if text == "auto":
        return 0
    try:
        side = int(text)
    except ValueError:
        raise ConfigError(f"--tile {value}: expected {TILE_CHOICES}, e.g. --tile auto.") from None
    if side < 8:
        raise ConfigError(f"--tile {value}: a tile must be at least 8 pixels on a side; try --tile auto.")
    return side


def tiling_for(recipe: Any, prior: Any, resolution: int) -> Tiling | None:
    """The run's :class:`Tiling` (None without ``--tile``) for a loaded ``prior`` working at ``resolution`` px.

    A prior that can denoise in tiles has ``supports_tiling = True`` and a ``tile_grid()`` method giving
    (pixels per latent cell, pixels a tile side must be a multiple of).
    """
    side = parse_tile(getattr(recipe, "tile", "off"))
    if side is None:
        return None
    if not getattr(prior, "supports_tiling", False):
        raise ConfigError(NOT_TILED.format(prior=recipe.prior))
    latent_factor, multiple = prior.tile_grid()
    side = side or resolution
    if side % multiple:
        raise ConfigError(f"--tile {side}: this model's tiles must be a multiple of {multiple} px on a side (its VAE "
                          f"and UNet halve them that often); try --tile {max(multiple, side // multiple * multiple)}.")
    return Tiling(side, float(recipe.tile_overlap), int(recipe.batch_size), latent_factor)


def working_side(size: tuple[int, int], tiling: Tiling | None, resolution: int) -> tuple[int, str | None]:
    """The square side an image of ``size`` (height, width) is worked at, and a note for the user, if any.

    Without tiling: the model's ``resolution``. With it: the image's long side rounded up to the latent grid
    (a multiple of ``latent_factor``; the image is padded to it, not resized), so the counterfactual and the map
    are at the scan's own resolution; an image smaller than one tile is resized up to the tile's size and worked in
    one pass.
    """
    if tiling is None:
        return resolution, None
    side = max(size)
    if side < tiling.tile:
        return tiling.tile, (f"{size[1]}x{size[0]} px is smaller than one {tiling.tile}-px tile, so it was resized to "
                             f"{tiling.tile} px and ran in one pass")
    factor = tiling.latent_factor
    return -(-side // factor) * factor, None
