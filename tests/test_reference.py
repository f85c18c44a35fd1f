"""``--reference reconstruction``: the map is the prior's unconditional reconstruction (same noise, no
guidance) minus the counterfactual, so what both share (VAE blur, resampled texture) cancels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from dva.core.errors import ConfigError
from dva.core.plugins import load_catalogue
from dva.core.registry import load_entries, resolve

from tests.conftest import runner

STEPS = 4
SEED = 3


dva_run = runner(steps=STEPS, seed=SEED, strength=0.75, guidance_scale=5.0)


def saved(out, stem):
    return load_file(str(out / stem / "attribution.safetensors"))


def gray(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=-1) / 255


@pytest.mark.parametrize("prior", ["sdedit", "ddim-inversion"])
def test_an_unguided_unconditional_counterfactual_is_its_own_reference(catalogue, tiny_sd, images, tmp_path, prior):
    """The reconstruction must start from the counterfactual's own noise: asked for the same thing, the two
    agree exactly and the map is zero, while the input-referenced map of the same run is not."""
    same = {"model": str(tiny_sd), "prior": prior, "prompt": "", "guidance_scale": 1.0}
    assert dva_run(catalogue, images[:2], tmp_path / "ref", reference="reconstruction", **same).exit_code == 0
    assert dva_run(catalogue, images[:2], tmp_path / "input", **same).exit_code == 0
    for image in images[:2]:
        assert np.abs(saved(tmp_path / "ref", image.stem)["attribution"]).max() == 0.0
        assert np.abs(saved(tmp_path / "input", image.stem)["attribution"]).max() > 10 / 255


def test_the_map_is_the_reconstruction_minus_the_counterfactual(catalogue, tiny_sd, images, tmp_path):
    assert dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd), reference="reconstruction",
                   fullsize="all").exit_code == 0
    folder = tmp_path / "out" / "scan0"
    tensors = saved(tmp_path / "out", "scan0")
    expected = gray(folder / "reconstruction.png") - gray(folder / "counterfactual.png")
    assert np.abs(tensors["attribution"] - expected).max() <= 1.5 / 255  # the PNGs are rounded to 8 bits
    assert np.abs(tensors["attribution"]).max() > 10 / 255, "the prompt and guidance must change something"
    assert (folder / "fullsize" / "reconstruction.png").is_file()
    with safe_open(str(folder / "attribution.safetensors"), "np") as opened:
        assert opened.metadata()["definition"].startswith("unconditional reconstruction - counterfactual")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["recipe"]["reference"] == "reconstruction"
    assert "reconstruction" in (tmp_path / "out" / "report.html").read_text()


def test_samples_and_batches_do_not_change_a_reconstruction_referenced_map(catalogue, tiny_sd, images, tmp_path):
    """K samples: the mean reconstruction minus the mean counterfactual, the spread that of the K maps."""
    dva_run(catalogue, images, tmp_path / "one", model=str(tiny_sd), reference="reconstruction", samples=2, batch_size=1)
    dva_run(catalogue, images[::-1], tmp_path / "four", model=str(tiny_sd), reference="reconstruction", samples=2,
            batch_size=4)
    singles = [saved(dva_run(catalogue, images[:1], tmp_path / f"s{k}", model=str(tiny_sd), seed=SEED + k,
                             reference="reconstruction").out, "scan0")["attribution"] for k in range(2)]
    for image in images:
        alone, batched = saved(tmp_path / "one", image.stem), saved(tmp_path / "four", image.stem)
        for key in ("attribution", "uncertainty"):
            assert np.abs(alone[key] - batched[key]).max() <= 1 / 255, key
    first = saved(tmp_path / "one", "scan0")
    assert np.abs(first["attribution"] - np.mean(singles, axis=0)).max() <= 1e-4
    assert np.abs(first["uncertainty"] - np.std(singles, axis=0, ddof=1)).max() <= 1e-4


def test_the_default_reference_keeps_old_runs_resumable(catalogue, tiny_sd, images, tmp_path):
    """A run made before --reference existed has no 'reference' in its fingerprint; the default adds none."""
    dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd))
    record = json.loads((tmp_path / "out" / "scan0" / "record.json").read_text())
    rerun = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd), reference="input")
    assert rerun.count("skipped") == 1
    changed = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd), reference="reconstruction")
    assert changed.count("done") == 1
    assert json.loads((tmp_path / "out" / "scan0" / "record.json").read_text())["fingerprint"] != record["fingerprint"]


def test_an_unknown_reference_is_refused_in_one_sentence(catalogue):
    with pytest.raises(ConfigError, match="must be one of: input, reconstruction"):
        resolve(load_entries(), load_catalogue(entry_points=False), "default", {"reference": "mean"})


def test_ddim_inversion_inverts_each_batch_once_for_both_outputs(catalogue, tiny_sd, images, tmp_path, monkeypatch):
    """The reconstruction denoises the inputs just inverted: the inversion is reused, not run again."""
    from dva.components.ddim_inversion import DDIMInversionPrior

    calls = []
    original = DDIMInversionPrior.invert

    def counted(self, latents, *arguments):
        calls.append(len(latents))
        return original(self, latents, *arguments)

    monkeypatch.setattr(DDIMInversionPrior, "invert", counted)
    result = dva_run(catalogue, images, tmp_path / "out", model=str(tiny_sd), prior="ddim-inversion",
                     reference="reconstruction", batch_size=2)
    assert result.exit_code == 0 and calls == [2, 1]
