"""Speed options change how fast and in how much memory, not what comes out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file


def test_channels_last_and_vae_slicing_give_the_same_maps_and_resume_the_same_run(tiny_radbert_model, images, tmp_path,
                                                                                   capsys):
    from dva.cli import main

    def dva(*flags: str, out: str) -> None:
        with pytest.raises(SystemExit) as done:
            main(["run", *map(str, images), "--model", str(tiny_radbert_model), "--steps", "3", "--batch-size", "2",
                  "--device", "cpu", "--out", str(tmp_path / out), *flags])
        assert done.value.code == 0, capsys.readouterr().err

    dva(out="plain")
    dva("--channels-last", "--vae-slicing", out="fast")
    recipe = json.loads((tmp_path / "fast" / "manifest.json").read_text())["recipe"]
    assert recipe["channels_last"] is True and recipe["vae_slicing"] is True and recipe["compile"] is False
    for image in images:
        a = load_file(str(tmp_path / "plain" / image.stem / "attribution.safetensors"))
        b = load_file(str(tmp_path / "fast" / image.stem / "attribution.safetensors"))
        np.testing.assert_allclose(a["attribution"], b["attribution"], atol=1e-4)
    dva("--channels-last", "--vae-slicing", out="plain")  # a speed option does not redo finished images
    statuses = [i["status"] for i in json.loads((tmp_path / "plain" / "manifest.json").read_text())["images"]]
    assert statuses == ["skipped"] * len(images)
