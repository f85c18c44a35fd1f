"""dva's built-ins pass the conformance kit that plugin authors run (dva.testing.conformance),
and the kit catches what it promises to catch."""

from __future__ import annotations

import csv
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dva import EncoderSpec, MetricSpec, PluginError, hookimpl
from dva.core.plugins import BUILTIN_PLUGINS, get_catalogue
from dva.testing import conformance
from dva.testing.conformance import ConformanceError


def builtin(catalogue, kind: str) -> list[str]:
    return [name for name, item in sorted(catalogue.components[kind].items()) if item.plugin.distribution == "dva"]


def test_builtin_plugin_modules_are_light_to_import():
    conformance.check_light_import(*BUILTIN_PLUGINS)


@pytest.mark.parametrize("name", ["radbert", "biobert", "pubmedclip", "clip", "minilm"])
def test_builtin_encoders_conform(catalogue, name, tmp_path):
    conformance.check_encoder(catalogue.get("encoder", name), tmp_path)


@pytest.mark.parametrize("name", ["pndm", "ddim", "dpm-solver++", "euler", "unipc"])
def test_builtin_schedulers_conform(catalogue, name, tmp_path):
    conformance.check_scheduler(catalogue.get("scheduler", name), tmp_path)


def test_every_builtin_encoder_scheduler_prior_modality_and_dataset_is_covered_here(catalogue):
    assert builtin(catalogue, "encoder") == ["biobert", "clip", "minilm", "pubmedclip", "radbert"]
    assert builtin(catalogue, "scheduler") == ["ddim", "dpm-solver++", "euler", "pndm", "unipc"]
    assert builtin(catalogue, "prior") == ["controlnet-canny", "ddim-inversion", "sdedit"]
    assert builtin(catalogue, "modality") == ["chest-xray"]
    assert builtin(catalogue, "dataset") == ["class-folders", "covid-radiography", "csv"]


def test_builtin_priors_conform(catalogue, tmp_path):
    from dva.testing.tiny import tiny_controlnet

    conformance.check_prior(catalogue.get("prior", "sdedit"))
    conformance.check_prior(catalogue.get("prior", "ddim-inversion"))
    tiny_controlnet().save_pretrained(tmp_path / "controlnet")
    conformance.check_prior(catalogue.get("prior", "controlnet-canny"), {"controlnet": str(tmp_path / "controlnet")})


def test_chest_xray_reads_a_png_and_a_mask_through_the_modality_contract(catalogue, images, tmp_path):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.where(np.arange(64)[None, :] < 32, 255, 0).astype(np.uint8).repeat(64, 0)).save(mask)
    source = conformance.check_modality(catalogue.get("modality", "chest-xray"), images[0], tmp_path / "out", mask)
    (image,) = source.images
    assert image.name == "" and image.pixels.shape == (64, 64) and image.mask[:, :32].all() and not image.mask[:, 32:].any()


def test_builtin_dataset_layouts_conform(catalogue, dataset, tmp_path):
    from dva.datasets.phantoms import make_phantoms

    conformance.check_dataset_layout(catalogue.get("dataset", "class-folders"), dataset)
    conformance.check_dataset_layout(catalogue.get("dataset", "covid-radiography"), make_phantoms(tmp_path / "p", 1, 64))
    table = tmp_path / "labels" / "labels.csv"
    table.parent.mkdir()
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([[str(path), path.parent.name] for path in sorted(dataset.rglob("*.png"))])
    conformance.check_dataset_layout(catalogue.get("dataset", "csv"), table)


# -- metrics: the kit against the MetricSpec contract, with metrics of this module ---------------------


class MeanAbsoluteDifference:
    """A pairs metric: 0 for identical images."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def score(self, image, counterfactual, mask=None) -> dict[str, float]:
        return {"mad": self.scale * float(np.abs(np.asarray(image) - np.asarray(counterfactual)).mean())}


class AlwaysZero(MeanAbsoluteDifference):
    def score(self, image, counterfactual, mask=None) -> dict[str, float]:
        return {"mad": 0.0}


class MeanDistance:
    """A sets metric: distance of the two sets' mean pixel values."""

    def distance(self, paths_a, paths_b) -> float:
        mean = lambda paths: np.mean([np.asarray(Image.open(p), dtype=np.float32).mean() for p in paths])  # noqa: E731
        return float(abs(mean(paths_a) - mean(paths_b)))


class Overlap:
    """A maps metric: Dice of the map above half its maximum with the lesion."""

    def score(self, attribution, lesion, region=None) -> dict[str, float]:
        found = np.asarray(attribution) > 0.5 * np.asarray(attribution).max()
        return {"dice": float(2 * (found & lesion).sum() / (found.sum() + lesion.sum()))}


def metric(name: str, implementation: str, scope: str = "pairs", columns: tuple[str, ...] = ("mad",)) -> MetricSpec:
    return MetricSpec(name=name, implementation=f"{__name__}:{implementation}", scope=scope, columns=columns)


def test_the_metric_check_gives_identical_images_a_perfect_score(tmp_path):
    values = conformance.check_metric(metric("mad", "MeanAbsoluteDifference"), {"mad": 0.0}, tmp_path)
    assert values == {"mad": 0.0}
    conformance.check_metric(metric("mean-distance", "MeanDistance", "sets", ("distance",)), {"distance": 0.0}, tmp_path)
    conformance.check_metric(metric("overlap", "Overlap", "maps", ("dice",)), {"dice": 1.0}, tmp_path)


@pytest.mark.parametrize(
    "spec, perfect, message",
    [
        (metric("zero", "AlwaysZero"), {"mad": 0.0}, "different images score as well"),
        (metric("mad", "MeanAbsoluteDifference"), {"mad": 1.0}, "identical images give mad=0.0, not 1.0"),
        (metric("mad", "MeanAbsoluteDifference", columns=("l1",)), {"l1": 0.0}, "declares columns"),
    ],
)
def test_the_metric_check_catches_a_constant_a_wrong_or_an_undeclared_score(spec, perfect, message, tmp_path):
    with pytest.raises(ConformanceError, match=message):
        conformance.check_metric(spec, perfect, tmp_path)


# -- plugins and the pytest fixture -----------------------------------------------------------------


def test_the_plugin_check_accepts_the_fake_plugin_and_refuses_a_bad_name(fake_plugin):
    found = conformance.check_plugin(fake_plugin)
    assert set(found) == {"encoder", "prior", "scheduler", "modality"}
    shouty = types.ModuleType("shouty")
    shouty.register_encoders = hookimpl(lambda register: register(EncoderSpec(name="My_BERT", implementation="json:dumps")))
    with pytest.raises(ConformanceError, match="lowercase and hyphenated"):
        conformance.check_plugin(shouty)


def test_the_dva_plugins_fixture_gives_dva_an_isolated_catalogue(dva_plugins):
    extra = types.ModuleType("extra_metrics")
    extra.register_metrics = hookimpl(lambda register: register(metric("mad", "MeanAbsoluteDifference")))
    catalogue = dva_plugins(extra)
    assert get_catalogue() is catalogue
    assert "mad" in catalogue.names("metric") and "fake-bert" not in catalogue.names("encoder")
    broken = types.ModuleType("broken_plugin")
    broken.register_encoder = hookimpl(lambda register: None)  # misspelled hook
    with pytest.raises(PluginError, match="register_encoder"):
        dva_plugins(broken)


def test_the_tiny_sd_fixture_is_a_stable_diffusion_folder(dva_tiny_sd: Path):
    assert (dva_tiny_sd / "model_index.json").is_file() and (dva_tiny_sd / "unet").is_dir()
