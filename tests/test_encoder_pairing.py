"""An encoder the UNet was never trained with is named on the terminal, in manifest.json and in report.html,
and refused under --strict.

Matching widths do not make a stock encoder meaningful to a UNet: stock Stable Diffusion with a stock
RadBERT runs without any projection warning, yet its counterfactuals mean nothing until the pair is
fine-tuned together. The model's own encoder is its folder's ``text_encoder/`` (SD's CLIP, or what a dva
model was trained with), or the weights a dva model's ``encoder_source`` names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dva.core.model_folder import inspect_model
from dva.core.registry import Recipe
from dva.core.runtime import choose_encoder


def bert_folder(folder: Path, seed: int = 0) -> Path:
    """A stock tiny RadBERT (32 wide, as the tiny UNets) saved as a hub download is: weights and tokenizer together."""
    from dva.plugins.encoders import BUILTIN_ENCODERS

    encoder = next(spec for spec in BUILTIN_ENCODERS if spec.name == "radbert").create(seed=seed)
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    return folder


def dva(args: list[str], capsys) -> tuple[int, str]:
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main(args)
    return done.value.code, capsys.readouterr().err


def test_a_stock_encoder_on_stable_diffusion_is_called_untrained_everywhere(tiny_sd, images, tmp_path, capsys):
    radbert = bert_folder(tmp_path / "RadBERT")
    out = tmp_path / "out"
    code, err = dva(["run", str(images[0]), "--model", str(tiny_sd), "--encoder", "radbert", "--encoder-path",
                     str(radbert), "--steps", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "WARNING: Encoder not trained with this model" in err and "UNTRAINED PROJECTION" not in err
    header = json.loads((out / "manifest.json").read_text())
    assert header["encoder"]["source"] == str(radbert)
    assert header["encoder_pairing"] == {
        "paired": False, "encoder": "radbert", "source": str(radbert), "trained_encoder": "clip",
        "trained_source": f"{tiny_sd}/text_encoder", "warning": header["encoder_pairing"]["warning"]}
    assert "trained with the 'clip' encoder" in header["encoder_pairing"]["warning"]
    report = (out / "report.html").read_text()
    assert '<p class="banner" role="alert">Encoder not trained with this model' in report


def test_strict_refuses_an_untrained_encoder_before_anything_loads(tiny_sd, images, tmp_path, capsys, monkeypatch):
    import dva.core.runtime as runtime

    monkeypatch.setattr(runtime, "load_diffusion_parts", lambda *a, **k: pytest.fail("loaded the model"))
    out = tmp_path / "out"
    code, err = dva(["run", str(images[0]), "--model", str(tiny_sd), "--encoder", "radbert", "--encoder-path",
                     str(bert_folder(tmp_path / "RadBERT")), "--strict", "--out", str(out)], capsys)
    assert code == 2
    assert "--strict: the encoder is not the one the model was trained with" in err and "dva finetune" in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("model", ["tiny_sd", "tiny_radbert_model"])
def test_the_models_own_encoder_is_paired_and_passes_strict(model, images, tmp_path, capsys, request):
    folder = request.getfixturevalue(model)
    out = tmp_path / "out"
    code, err = dva(["run", str(images[0]), "--model", str(folder), "--steps", "2", "--strict", "--out", str(out)],
                    capsys)
    assert code == 0, err
    assert "not trained with this model" not in err
    pairing = json.loads((out / "manifest.json").read_text())["encoder_pairing"]
    assert pairing["paired"] is True and pairing["warning"] is None
    assert pairing["source"] == pairing["trained_source"] == f"{folder}/text_encoder"
    assert 'class="banner"' not in (out / "report.html").read_text()


def test_other_weights_of_the_trained_encoder_are_not_its_own_and_a_copy_is(catalogue, tiny_radbert_model, tmp_path):
    source = inspect_model(str(tiny_radbert_model))
    stock = choose_encoder(Recipe(encoder_options={"path": str(bert_folder(tmp_path / "RadBERT", seed=1))}),
                           catalogue, source)
    assert not stock.paired
    assert f"trained with the 'radbert' weights in {tiny_radbert_model}/text_encoder, not those in" in stock.warning
    copy = tmp_path / "copy"
    for part in ("text_encoder", "tokenizer"):
        shutil.copytree(tiny_radbert_model / part, copy, dirs_exist_ok=True)
    assert choose_encoder(Recipe(encoder_options={"path": str(copy)}), catalogue, source).paired


def test_a_dva_folder_is_paired_with_the_encoder_its_encoder_source_names(catalogue, tmp_path):
    from tests.test_encoder_source import referencing_model

    model, encoder_folder = referencing_model(tmp_path)
    source = inspect_model(str(model))
    own = choose_encoder(Recipe(), catalogue, source)
    assert own.paired and own.location == own.trained_source == str(encoder_folder)
    assert choose_encoder(Recipe(encoder_options={"path": str(encoder_folder)}), catalogue, source).paired


def test_a_model_that_does_not_say_what_it_was_trained_with_is_not_called_paired(catalogue, tiny_sd, tmp_path):
    stripped = tmp_path / "sd"
    shutil.copytree(tiny_sd, stripped, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    choice = choose_encoder(Recipe(), catalogue, inspect_model(str(stripped)))
    assert not choice.paired and "does not record which 'clip' weights it was trained with" in choice.warning


def test_compare_strict_refuses_before_anything_runs(tiny_sd, images, tmp_path, capsys):
    out = tmp_path / "compare"
    code, err = dva(["compare", str(images[0]), "--model", str(tiny_sd), "--encoders",
                     f"clip,radbert={bert_folder(tmp_path / 'RadBERT')}", "--strict", "--out", str(out)], capsys)
    assert code == 2 and "--strict: the encoder is not the one the model was trained with" in err
    assert not out.exists()
