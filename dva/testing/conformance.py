"""Conformance checks a plugin package runs on its own components (dva runs them on its built-ins).

Each ``check_*`` function exercises one spec through the contract dva relies on, with tiny inputs
and no network, and raises :class:`ConformanceError` (an AssertionError, so pytest shows it as a
failure) saying what broke. Use them from your plugin's tests::

    from dva.testing.conformance import check_modality, check_plugin

    def test_my_plugin_conforms(tmp_path):
        specs = check_plugin(my_plugin)                  # loads strictly, names, lazy imports
        check_modality(specs["modality"]["my-ct"], make_sample(tmp_path), tmp_path / "out")

Nothing here imports torch until a check that needs it runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")
HEAVY_MODULES = ("torch", "diffusers", "transformers")
SIZE = 64  # the tiny models' image side (dva.testing.tiny: UNet sample size 32, VAE factor 2)


class ConformanceError(AssertionError):
    """A component breaks the contract dva relies on."""


def _require(condition: Any, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def smooth_images(count: int = 2, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """``count`` smooth, different gray images ``(count, size, size)`` in [0, 1], float32."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        cx, cy, width = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.02, 0.06)
        images.append(0.2 + 0.6 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / width) + 0.1 * np.sin(6 * x + 3 * y))
    return np.clip(np.stack(images), 0.0, 1.0).astype(np.float32)


# -- plugins ----------------------------------------------------------------------------------------


def check_plugin(plugin: Any) -> dict[str, dict[str, Any]]:
    """Load dva's built-ins plus ``plugin`` (a module or object with hook implementations) strictly.

    Checks that it registers something, that every name is lowercase and hyphenated, and that every
    import path it names (implementation, a modality's writer, a dataset's detector) imports.
    Returns its specs by kind and name.
    """
    from dva.core.plugins import load_catalogue
    from dva.core.specs import import_object

    catalogue = load_catalogue(strict=True, entry_points=False, extra=[plugin])
    found: dict[str, dict[str, Any]] = {}
    for kind, registered in catalogue.components.items():
        for name, item in registered.items():
            if item.plugin.distribution == "(in-process)":
                found.setdefault(kind, {})[name] = item.spec
    _require(found, f"Plugin {getattr(plugin, '__name__', plugin)!r} registers no component.")
    for kind, specs in found.items():
        for name, spec in specs.items():
            _require(NAME.match(name), f"{kind} name {name!r} should be lowercase and hyphenated, like 'my-ct'.")
            for field in ("implementation", "writer", "detect"):
                path = getattr(spec, field, None)
                if path:
                    _require(":" in path, f"{kind} '{name}': {field} {path!r} should be 'module:attribute'.")
                    import_object(path)
    return found


def check_light_import(*modules: str) -> None:
    """Importing ``modules`` (a plugin's entry point) must not import torch, diffusers or transformers:
    ``dva --help`` and ``dva plugins`` load every plugin. Runs in one fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"    heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "    if heavy:\n"
        "        print(name, ', '.join(heavy))\n"
        "        break\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    _require(done.returncode == 0, f"Importing {', '.join(modules)} fails: {done.stderr.strip().splitlines()[-1:]}")
    if done.stdout.strip():
        module, heavy = done.stdout.strip().split(" ", 1)
        raise ConformanceError(f"Importing {module} imports {heavy}; import it inside the functions that need it.")


# -- encoders, priors, schedulers -------------------------------------------------------------------


def check_encoder(spec: Any, folder: Path, prompts: tuple[str, ...] = ("normal scan", "an opacity")) -> None:
    """An encoder builds from its tiny config, encodes to ``(B, L, D)``, saves and loads back identically."""
    import torch

    from dva.core.contracts import TextEncoder

    encoder = spec.create()
    _require(isinstance(encoder, TextEncoder),
             f"encoder '{spec.name}': lacks one of output_size, encode, fit_to, save_pretrained (dva.TextEncoder).")
    states = encoder.encode(list(prompts), "cpu")
    _require(
        states.ndim == 3 and states.shape[0] == len(prompts) and states.shape[2] == encoder.output_size,
        f"encoder '{spec.name}': encode gave shape {tuple(states.shape)}, not ({len(prompts)}, L, {encoder.output_size}).",
    )
    _require(torch.isfinite(states).all(), f"encoder '{spec.name}': encode gave non-finite values.")
    encoder.save_pretrained(folder)
    loaded = spec.load(str(folder), subfolder="text_encoder", tokenizer_subfolder="tokenizer")
    again = loaded.encode(list(prompts), "cpu")
    _require(
        again.shape == states.shape and torch.allclose(again, states, atol=1e-5),
        f"encoder '{spec.name}': saved and loaded back, it encodes differently.",
    )


def check_prior(spec: Any, options: Mapping[str, Any] | None = None, steps: int = 2) -> None:
    """A prior builds on tiny Stable Diffusion parts and turns two images into two counterfactuals in
    [0, 1]; an image's result does not depend on the batch it is in (its own seeded generator)."""
    import torch

    from dva.core.contracts import GenerateRequest, ModelParts, Prior
    from dva.testing.tiny import sd_scheduler, tiny_unet, tiny_vae

    prior = spec.create(**spec.check_options(dict(options or {}), f"prior '{spec.name}'"))
    _require(isinstance(prior, Prior), f"prior '{spec.name}': lacks one of load, condition, unet_calls, generate (dva.Prior).")
    prior.load(ModelParts(tiny_unet(), tiny_vae(), sd_scheduler(), torch.device("cpu"), torch.float32))
    _require(prior.unet_calls(steps) >= 1, f"prior '{spec.name}': unet_calls({steps}) is below 1.")
    gray = smooth_images(2)
    conditions = prior.condition(gray)
    if conditions is not None:
        _require(np.shape(conditions) == gray.shape, f"prior '{spec.name}': condition images are not (B, H, W).")
    embeds = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0))

    def generate(index: slice) -> torch.Tensor:
        images = torch.from_numpy(gray[index])[:, None].repeat(1, 3, 1, 1)
        condition = None if conditions is None else torch.from_numpy(np.asarray(conditions)[index])[:, None].repeat(1, 3, 1, 1)
        generators = [torch.Generator("cpu").manual_seed(0) for _ in range(images.shape[0])]
        return prior.generate(GenerateRequest(images, embeds, torch.zeros_like(embeds), generators, steps, 2.0, condition))

    both = generate(slice(0, 2))
    _require(tuple(both.shape) == (2, 3, SIZE, SIZE), f"prior '{spec.name}': generate gave shape {tuple(both.shape)}.")
    _require(torch.isfinite(both).all() and both.min() >= 0 and both.max() <= 1,
             f"prior '{spec.name}': counterfactuals are not within [0, 1].")
    alone = generate(slice(1, 2))
    _require((alone[0] - both[1]).abs().max() <= 2 / 255,
             f"prior '{spec.name}': an image's counterfactual changes with the batch it is in.")


def check_scheduler(spec: Any, folder: Path) -> None:
    """A scheduler swaps in from SD's config (with its overrides), steps a sample, saves and loads its config."""
    import torch

    from dva.testing.tiny import sd_scheduler

    scheduler = spec.from_config(sd_scheduler().config)
    for key, value in spec.config_overrides.items():
        _require(scheduler.config.get(key) == value, f"scheduler '{spec.name}': override {key}={value!r} not applied.")
    scheduler.set_timesteps(4)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, timestep)
        sample = scheduler.step(0.1 * model_input, timestep, sample).prev_sample
    _require(tuple(sample.shape) == (1, 4, 8, 8) and torch.isfinite(sample).all(),
             f"scheduler '{spec.name}': stepping gave a bad sample.")
    scheduler.save_config(folder)
    loaded = type(scheduler).from_config(type(scheduler).load_config(folder))
    public = lambda config: {k: v for k, v in dict(config).items() if not k.startswith("_")}  # noqa: E731
    _require(public(loaded.config) == public(scheduler.config), f"scheduler '{spec.name}': its saved config loads differently.")


# -- modalities -------------------------------------------------------------------------------------


def check_modality(spec: Any, path: Path, folder: Path, mask: Path | None = None, **options: Any) -> Any:
    """A modality reads ``path`` into checked images the same way twice, fits them to the model and back,
    and (with a writer) writes its own outputs from the results of an unchanged image: the round trip.

    Returns the :class:`dva.ScanInput`, for your own checks of what the writer wrote.
    """
    from dva.core import io
    from dva.core.modality import ImageResult

    _require(spec.healthy_prompt.strip(), f"modality '{spec.name}' has no healthy_prompt.")
    _require(all(e.startswith(".") and e == e.lower() for e in spec.extensions),
             f"modality '{spec.name}': extensions should be lowercase and start with a dot, like '.nii.gz'.")
    source = spec.read(path, mask, **options)
    again = spec.read(path, mask, **options)
    _require(re.fullmatch(r"[0-9a-f]{64}", source.sha256 or ""), f"modality '{spec.name}': sha256 is not a hex digest.")
    _require(
        again.sha256 == source.sha256 and [i.name for i in again.images] == [i.name for i in source.images]
        and all(np.array_equal(a.pixels, b.pixels) for a, b in zip(again.images, source.images)),
        f"modality '{spec.name}': reading {Path(path).name} twice gives different images.",
    )
    for image in source.images:
        model, padding = io.to_model_input(image.pixels, SIZE)
        back = io.to_original(model, padding, image.pixels.shape)
        _require(back.shape == image.pixels.shape, f"modality '{spec.name}': image {image.name!r} does not fit back.")
    if spec.writer:
        results = [
            ImageResult(image, folder / image.name, image.pixels, np.zeros_like(image.pixels)) for image in source.images
        ]
        written = spec.write(folder, source, results)
        _require(written, f"modality '{spec.name}': the writer wrote no file.")
        missing = [name for name in written if not (Path(folder) / name).is_file()]
        _require(not missing, f"modality '{spec.name}': the writer lists files it did not write: {missing}.")
    return source


# -- datasets and metrics ---------------------------------------------------------------------------


def check_dataset_layout(spec: Any, location: Path, **options: Any) -> Any:
    """A dataset layout opens ``location`` as a LabelledDataset whose files dva reads, detects it (if it
    has a detector), and opens it again with the same fingerprint. Returns the dataset."""
    from dva.core.specs import import_object
    from dva.datasets import LabelledDataset
    from dva.datasets.layouts import check_dataset, dataset_fingerprint

    checked = spec.check_options(options, f"dataset '{spec.name}'")
    dataset = spec.resolve()(Path(location), **checked)
    _require(isinstance(dataset, LabelledDataset), f"dataset '{spec.name}' opened a {type(dataset).__name__}.")
    _require(dataset.samples, f"dataset '{spec.name}' found no samples in {location}.")
    if spec.detect:
        _require(import_object(spec.detect)(Path(location)), f"dataset '{spec.name}' does not detect {location}.")
    check_dataset(dataset)
    reopened = spec.resolve()(Path(location), **checked)
    _require(dataset_fingerprint(reopened) == dataset_fingerprint(dataset),
             f"dataset '{spec.name}': opening {location} twice gives different data.")
    return dataset


def check_metric(
    spec: Any, perfect: Mapping[str, float], folder: Path, options: Mapping[str, Any] | None = None,
    tolerance: float = 1e-4,
) -> dict[str, float]:
    """A metric gives identical images its ``perfect`` values (e.g. ``{"ssim": 1.0}``, ``{"fid": 0.0}``),
    and, for pairs and maps, something else for different ones. Returns the identical images' values.

    A metric whose weights are absent raises :class:`dva.MetricUnavailable` from here; skip on it.
    """
    measure = spec.create(**spec.check_options(dict(options or {}), f"metric '{spec.name}'"))
    image, other = smooth_images(2)
    if spec.scope == "sets":
        from dva.core.io import atomic_write_png

        paths = []
        for index, picture in enumerate(smooth_images(4, seed=1)):
            paths.append(Path(folder) / f"set-{index}.png")
            atomic_write_png(paths[-1], picture)
        same, different = {spec.columns[0]: float(measure.distance(paths, list(paths)))}, None
    elif spec.scope == "pairs":
        same, different = measure.score(image, image.copy(), None), measure.score(image, other, None)
    elif spec.scope == "maps":
        lesion = other > np.quantile(other, 0.9)
        same, different = measure.score(lesion.astype(np.float32), lesion, None), measure.score(image, lesion, None)
    else:
        raise ConformanceError(f"metric '{spec.name}': scope {spec.scope!r} is not sets, pairs or maps.")
    _require(set(same) == set(spec.columns),
             f"metric '{spec.name}': returned {sorted(same)}, but its spec declares columns {list(spec.columns)}.")
    for column, value in perfect.items():
        _require(abs(float(same[column]) - value) <= tolerance,
                 f"metric '{spec.name}': identical images give {column}={same[column]}, not {value}.")
    if different is not None:
        _require(any(abs(float(different[c]) - v) > tolerance for c, v in perfect.items()),
                 f"metric '{spec.name}': different images score as well as identical ones.")
    return {column: float(value) for column, value in same.items()}
