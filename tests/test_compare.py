"""dva compare: every combination run once with components loaded once, evaluated, tabled, shown and plotted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from dva.datasets.phantoms import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("compare") / "phantoms", 2, 64, seed=21,
                         classes=["Normal", "Lung Opacity"])


def compare(args: list[str], capsys) -> int:
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main(["compare", *args])
    return done.value.code


def test_every_combination_is_run_evaluated_and_shown(tiny_radbert_model, phantoms, tmp_path, capsys, monkeypatch):
    import dva.core.runtime as runtime

    loads = []
    original = runtime.load_diffusion_parts
    monkeypatch.setattr(runtime, "load_diffusion_parts", lambda *a: loads.append(a) or original(*a))
    out = tmp_path / "compare"
    code = compare([str(phantoms / "Lung Opacity" / "images"), str(phantoms / "Normal" / "images"),
                    "--model", str(tiny_radbert_model), "--schedulers", "pndm,ddim", "--strength", "0.3,0.6",
                    "--steps", "4", "--real", str(phantoms), "--metrics", "ssim,localisation", "--out", str(out)],
                   capsys)
    assert code == 0, capsys.readouterr().err
    assert len(loads) == 1, "the UNet and VAE are loaded once for all four combinations"
    document = json.loads((out / "comparison.json").read_text())
    assert [(c["scheduler"], c["strength"]) for c in document["combinations"]] == [
        ("pndm", 0.3), ("pndm", 0.6), ("ddim", 0.3), ("ddim", 0.6)]
    assert all(c["error"] is None and c["images"] == 4 for c in document["combinations"])
    assert all({"ssim", "auprc", "best_dice", "null_ratio"} <= set(c["summary"]) for c in document["combinations"])
    assert document["table"]["columns"][:4] == ["scheduler", "strength", "images", "s/image"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["ddim_s0.3", "ddim_s0.6", "pndm_s0.3", "pndm_s0.6"]
    with open(out / "comparison.csv") as handle:
        assert {row["row"] for row in csv.DictReader(handle)} == {"0", "1", "2", "3"}
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (128 + 4 * 2 * 128, 36 + 4 * 128), "one row per input, two cells per combination"
    page = (out / "contact_sheet.html").read_text()
    assert page.count('alt="input"') == 4 and "pndm · strength 0.3" in page
    assert (out / "plots" / "auprc_vs_strength.png").is_file()
    assert "Comparison of combinations" in capsys.readouterr().out


def test_a_failing_combination_is_reported_and_the_others_complete(tiny_radbert_model, images, tmp_path, capsys):
    out = tmp_path / "compare"
    code = compare([str(p) for p in images] + ["--model", str(tiny_radbert_model), "--encoders", "radbert,biobert",
                                               "--steps", "2", "--out", str(out)], capsys)
    assert code == 1
    combinations = json.loads((out / "comparison.json").read_text())["combinations"]
    assert combinations[0]["error"] is None and combinations[0]["summary"]["ssim"] > 0
    assert "trained with encoder 'radbert', not 'biobert'" in combinations[1]["error"]
    assert (out / "contact_sheet.png").is_file()


def test_a_misspelled_name_fails_before_anything_runs(tiny_radbert_model, images, tmp_path, capsys):
    out = tmp_path / "compare"
    code = compare([str(images[0]), "--model", str(tiny_radbert_model), "--priors", "sdedit,controlnet-cany",
                    "--out", str(out)], capsys)
    assert code == 2
    assert "Unknown prior 'controlnet-cany'. Did you mean 'controlnet-canny'?" in capsys.readouterr().err
    assert not out.exists()
