"""Stage 2, sample: batches of model images through the prior into counterfactuals.

``--samples K`` makes each image K entries of one prior call: sample k of image i is entry ``i * K + k``,
drawn with its own CPU generator seeded ``seed + k``, so an image's outputs depend neither on its batch
nor on the process that makes it. ``--reference reconstruction`` calls the prior a second time from the
same noise, unconditional and unguided. ``--tile`` hands the prior each image at its own size (the reader
fitted it so), one image per call: ``--batch-size`` then counts the tiles of one UNet call.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dva.core import attribution
from dva.core.contracts import GenerateRequest
from dva.core.registry import Recipe
from dva.core.run.jobs import Generated, ImageJob
from dva.core.tiles import tiling_for

if TYPE_CHECKING:
    import torch

NON_FINITE = ("{path}: the model produced non-finite values (NaN or infinity) for this image, so nothing was written "
              "for it; the model's weights are likely broken (a training that diverged): check or retrain the model.")


class Sampler:
    """The prior of a loaded runtime, with the prompt's embeddings and the recipe's sampling settings."""

    def __init__(self, runtime: Any, recipe: Recipe) -> None:
        self.prior = runtime.prior
        self.positive, self.negative = runtime.prompt_embeddings()
        self.recipe = recipe
        self.samples = recipe.samples
        # A call holds batch_size // K images (at least one), so it holds about batch_size entries.
        self.images_per_call = max(1, recipe.batch_size // self.samples)
        self.tiling = tiling_for(recipe, self.prior, runtime.resolution)
        if self.tiling is not None:  # images differ in size: one per call, --batch-size tiles per UNet call
            self.images_per_call = 1
        self._lungs: torch.Tensor | None = None  # the current batch's lung masks, for a prior's region option

    def sample(self, batch: list[ImageJob]) -> list[Generated | None]:
        """What the prior made for each image of ``batch``; None (and the job failed) where it made non-finite
        values. Each job is charged its share of the time."""
        started = time.perf_counter()
        gray = np.stack([job.model_image for job in batch])
        conditions = self.prior.condition(gray)
        images, condition = self._entries(gray), None if conditions is None else self._entries(conditions)
        self._lungs = self._lung_entries(batch)
        counterfactuals = self._generate(images, self.positive, self.recipe.guidance_scale, condition, len(batch))
        references = None
        if self.recipe.reference == "reconstruction":
            # The same prior from the same noise, unconditional and unguided: everything but the prompt's effect.
            references = self._generate(images, self.negative, 1.0, condition, len(batch))
        share = (time.perf_counter() - started) / len(batch)
        made = []
        for index, job in enumerate(batch):
            job.seconds += share
            made.append(self._one(index, job, counterfactuals, references, conditions))
        return made

    def _entries(self, gray: np.ndarray) -> torch.Tensor:
        """``(B, H, W)`` grayscale as the prior's ``(B * K, 3, H, W)`` input, each image repeated K times."""
        import torch

        return torch.from_numpy(gray)[:, None].repeat_interleave(self.samples, 0).repeat(1, 3, 1, 1)

    def _lung_entries(self, batch: list[ImageJob]) -> torch.Tensor | None:
        """The batch's lung masks (``--mask``) as ``(B * K, H, W)`` in {0, 1}, or None unless every image has one."""
        import torch

        if any(job.model_mask is None for job in batch):
            return None
        masks = torch.from_numpy(np.stack([job.model_mask for job in batch]).astype(np.float32))
        return masks.repeat_interleave(self.samples, 0)

    def _generate(self, images: torch.Tensor, prompt: torch.Tensor, guidance_scale: float,
                  condition: torch.Tensor | None, count: int) -> np.ndarray:
        """One prior call over the batch's entries; ``(B * K, H, W, 3)`` in [0, 1]."""
        import torch

        generators = [torch.Generator("cpu").manual_seed(self.recipe.seed + k)
                      for _ in range(count) for k in range(self.samples)]
        request = GenerateRequest(images, prompt, self.negative, generators, self.recipe.steps, guidance_scale,
                                  condition, self._lungs, self.tiling)
        return self.prior.generate(request).permute(0, 2, 3, 1).numpy()

    def _one(self, index: int, job: ImageJob, counterfactuals: np.ndarray, references: np.ndarray | None,
             conditions: np.ndarray | None) -> Generated | None:
        """Image ``index``'s entries as one :class:`Generated` (the mean and spread of its K samples)."""
        samples = self.samples
        own = slice(index * samples, (index + 1) * samples)
        if not (np.isfinite(counterfactuals[own]).all() and (references is None or np.isfinite(references[own]).all())):
            job.status, job.error = "failed", NON_FINITE.format(path=job.path)
            job.release()
            return None
        condition = None if conditions is None else conditions[index]
        if samples == 1:
            return Generated(counterfactuals[index], condition, reference=None if references is None else references[index])
        job.samples = samples
        mean, reference, spread = attribution.combine_samples(
            counterfactuals[own], None if references is None else references[own]
        )
        return Generated(mean, condition, spread, reference)
