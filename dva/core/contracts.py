"""The public contracts between dva and its components: what a plugin implements and the data it exchanges.

A plugin author imports all of this from ``dva`` and nothing deeper. A spec (``dva.PriorSpec``, ...)
names its implementation lazily; the Protocols below say what that implementation must offer, and the
data types are what dva hands it and expects back. dva checks the boundary where it can (a modality
reader's result, a spec's options); the Protocols are for type checkers and for reading.

Importing this module imports neither torch nor numpy: array and tensor types appear only in annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from dva.core.tiles import Tiling

MIN_SIDE = 16  # the fewest pixels on a side of an image dva reads; readers refuse smaller ones (InputError)

# -- data a prior exchanges ---------------------------------------------------------------------------


@dataclass
class ModelParts:
    """The loaded Stable Diffusion parts a prior builds its pipeline from (``Prior.load``)."""

    unet: Any
    vae: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype


@dataclass(frozen=True)
class GenerateRequest:
    """One batch for a prior's ``generate``: inputs ``(B, 3, H, W)`` in [0, 1], the prompt's and the
    negative prompt's embeddings ``(1, tokens, width)``, one CPU generator per input (so an image's
    counterfactual does not depend on its batch), the sampler's steps and guidance scale, and the
    prior's own condition images ``(B, 3, H, W)`` (from its ``condition``; None when it has none), and
    the inputs' lung masks ``(B, H, W)`` in {0, 1} from ``--mask`` (None without; a prior's ``region``
    option cuts lung zones from them), and with ``--tile`` how to denoise the inputs, which are then at
    the scan's own size, in blended model-sized tiles (:class:`dva.core.tiles.Tiling`)."""

    images: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor
    generators: list[Any]
    steps: int
    guidance_scale: float
    condition: torch.Tensor | None = None
    lungs: torch.Tensor | None = None
    tiling: Tiling | None = None  # --tile: denoise the full-size inputs in blended tiles (a prior's supports_tiling)


# -- data a modality exchanges ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """A scan as grayscale intensities in [0, 1] at its original size, with its content hash."""

    path: Path
    pixels: np.ndarray  # float32, (height, width)
    sha256: str
    kind: str  # "png", "jpeg", "dicom", ...
    notes: tuple[str, ...] = ()  # what reading decided for the user to know (the bit depth it assumed)
    # pixels = stored values / (2**bit_depth - 1): the depth outputs map back to; None where pixels are not a
    # plain scaling of stored values (DICOM, windowed; float images, stretched)
    bit_depth: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@dataclass(frozen=True)
class ScanImage:
    """One 2-D image of an input file, at its own size, before it is fitted to the model.

    ``name`` is "" when the file is a single image; otherwise it is unique within the file and names
    the image's output folder (``OUT/<file>/<name>/``), e.g. ``z042`` for an axial slice.
    """

    pixels: np.ndarray  # float32 (height, width) in [0, 1]
    name: str = ""
    mask: np.ndarray | None = None  # bool (height, width): maps are zero outside it


@dataclass(frozen=True)
class ScanInput:
    """What a modality reader makes of one input file.

    ``sha256`` hashes the file's bytes (a rerun resumes when it matches); ``context`` is anything the
    modality's writer needs to map outputs back onto the file (an affine, a shape, slice indices).
    """

    path: Path
    sha256: str
    kind: str
    images: tuple[ScanImage, ...]
    context: Any = None
    notes: tuple[str, ...] = ()  # what the reader assumed that the user should know (reported per image)
    bit_depth: int | None = None  # as :class:`Scan`'s: above 8, dva also writes a 16-bit counterfactual on this scale


@dataclass(frozen=True)
class ImageResult:
    """One image's results, as a modality writer receives them (full size, the image's own grid).

    ``counterfactual`` is the gray healthy counterfactual in [0, 1] as saved in
    ``fullsize/counterfactual.png``; ``attribution`` is the signed map ``input - counterfactual``
    (zero outside the image's mask) as saved in ``attribution.safetensors`` (``attribution_fullsize``).
    Both are read back from the image's ``folder``, so a resumed run gives its writer the same values.
    """

    image: ScanImage
    folder: Path
    counterfactual: np.ndarray
    attribution: np.ndarray


# -- data a dataset layout exchanges ------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One labelled image, with optional lung mask, ground-truth lesion mask and its own prompt."""

    path: Path
    label: str
    mask: Path | None = None
    lesion: Path | None = None
    prompt: str | None = None


@dataclass
class LabelledDataset:
    """The samples of one dataset location, in a stable order."""

    root: Path
    layout: str
    samples: list[Sample] = field(default_factory=list)

    def classes(self) -> list[str]:
        """Class labels in order of first appearance."""
        return list(dict.fromkeys(sample.label for sample in self.samples))

    def by_class(self, label: str) -> list[Sample]:
        return [sample for sample in self.samples if sample.label == label]


# -- what an implementation offers --------------------------------------------------------------------


@runtime_checkable
class Prior(Protocol):
    """A ``PriorSpec``'s implementation: a class built with the spec's checked options.

    A class may subclass it to inherit ``condition`` (none). A prior that draws no noise (DDIM inversion)
    also sets the class attribute ``deterministic = True``, and ``dva run`` then refuses ``--samples``
    above 1 for it. A prior that needs each image's mask (as ``request.lungs``) says why in an attribute
    ``needs_mask`` (a clause); ``dva run`` then refuses to run without ``--mask`` and fails an input that
    has none. A prior that can denoise full-resolution inputs in tiles (``--tile``) sets ``supports_tiling =
    True``, offers ``tile_grid()`` (pixels per latent cell, pixels a tile side must be a multiple of) and
    honours ``request.tiling``; ``dva run`` refuses ``--tile`` for any other.
    """

    def load(self, parts: ModelParts) -> None:
        """Build the pipeline from the loaded model parts."""

    def condition(self, images: np.ndarray) -> np.ndarray | None:
        """Extra conditioning images ``(B, H, W)`` for gray inputs ``(B, H, W)`` in [0, 1], or None (the default),
        handed back to ``generate`` as ``request.condition``."""
        return None

    def unet_calls(self, steps: int) -> int:
        """UNet calls per image for ``steps`` (before guidance doubles them). A prior whose calls include some it
        makes without guidance and shares with ``--reference reconstruction`` (an inversion) may also offer
        ``unguided_calls(steps)``, so the run's ``unet_evaluations`` counts them once."""

    def generate(self, request: GenerateRequest) -> torch.Tensor:
        """Counterfactuals ``(B, 3, H, W)`` in [0, 1], each from its own generator."""


@runtime_checkable
class TextEncoder(Protocol):
    """An ``EncoderSpec``'s implementation (``dva.components.text_encoders:TextEncoder`` is dva's for BERT
    and CLIP families). Built by the classmethods ``from_pretrained(spec, source, *, subfolder,
    tokenizer_subfolder, projection_source, max_length)`` and ``from_config(spec, config)``."""

    @property
    def output_size(self) -> int:
        """Width of the embeddings ``encode`` returns (after a projection, if any)."""

    def encode(self, prompts: list[str], device: Any = None) -> torch.Tensor:
        """Prompt embeddings ``(B, tokens, width)``."""

    def fit_to(self, cross_attention_dim: int) -> None:
        """Add a projection when the encoder's width differs from the UNet's cross-attention width."""

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``text_encoder/`` and ``tokenizer/`` (and a projection) into ``folder``."""


class ModalityReader(Protocol):
    """A ``ModalitySpec``'s ``implementation``: one input file into images. A reader without a ``mask``
    parameter gets dva's own mask reading; the spec's checked options come as keyword arguments."""

    def __call__(self, path: Path, mask: Path | None = None, **options: Any) -> ScanInput | Scan: ...


class ModalityWriter(Protocol):
    """A ``ModalitySpec``'s optional ``writer``: called once every image of a file is written; writes its
    files atomically into ``folder`` and returns their names relative to it."""

    def __call__(self, folder: Path, source: ScanInput, results: list[ImageResult]) -> list[str]: ...


class DatasetOpener(Protocol):
    """A ``DatasetSpec``'s ``implementation``: a dataset location into labelled samples."""

    def __call__(self, location: str | Path, **options: Any) -> LabelledDataset: ...


StepCallback = Callable[[int, int, str, float], None]  # (step, total, phase label, loss) after each step


class Finetuner(Protocol):
    """A ``FinetunerSpec``'s ``implementation`` that is a whole training run of its own: train on ``config`` (a
    ``dva.FinetuneConfig``) phase by phase, report each step, and write a dva model folder to ``config.out``;
    returns its path. (Most strategies are instead a ``dva.FinetuneStrategy`` subclass, which dva's trainer runs.)"""

    def __call__(self, config: Any, catalogue: Any, on_step: StepCallback = ...) -> Path: ...


@runtime_checkable
class SetMetric(Protocol):
    """A ``MetricSpec`` of scope ``"sets"``: one value comparing two sets of image files (FID)."""

    def distance(self, paths_a: Sequence[str | Path], paths_b: Sequence[str | Path]) -> float: ...


@runtime_checkable
class PairMetric(Protocol):
    """A ``MetricSpec`` of scope ``"pairs"`` (an input and its counterfactual) or ``"maps"`` (an attribution
    map and a ground-truth lesion, ``score(attribution, lesion, region)``): the spec's ``columns``."""

    def score(self, first: np.ndarray, second: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]: ...


Metric = Union[SetMetric, PairMetric]
"""A ``MetricSpec``'s implementation: a class built with the spec's checked options, answering its scope's call."""
