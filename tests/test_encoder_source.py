"""A dva model folder may name where its frozen encoder comes from instead of carrying a copy.

``dva.json``'s ``encoder_source`` (a folder, hub id or ``package:NAME``) is used when the folder has no
``text_encoder/``; fine-tuning such a folder with the encoder frozen keeps the reference and saves the
trained projection alone, so the result stays small (dva's bundled tiny model relies on it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dva.core.model_folder import inspect_model
from dva.core.registry import Recipe, load_entries, resolve
from dva.core.runtime import load_encoder
from dva.finetune.trainer import train
from dva.finetune.schedule import parse_schedule
from dva.finetune.config import FinetuneConfig
from dva.testing.tiny import make_tiny_dva_model


def referencing_model(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny dva folder (radbert family, projection 32 -> 48) whose encoder lives in a separate folder."""
    model = make_tiny_dva_model(tmp_path / "model", encoder="radbert", cross_attention_dim=48)
    encoder_folder = tmp_path / "encoder"
    shutil.move(str(model / "text_encoder"), encoder_folder)
    for file in (model / "tokenizer").iterdir():
        shutil.move(str(file), encoder_folder / file.name)
    (model / "tokenizer").rmdir()
    data = json.loads((model / "dva.json").read_text())
    (model / "dva.json").write_text(json.dumps({**data, "encoder_source": str(encoder_folder)}))
    return model, encoder_folder


def test_the_encoder_named_by_dva_json_is_loaded_with_the_folders_projection(catalogue, tmp_path):
    model, encoder_folder = referencing_model(tmp_path)
    source = inspect_model(str(model))
    assert not source.has_text_encoder and source.has_projection
    encoder = load_encoder(Recipe(), catalogue, source, 48)
    reference = catalogue.get("encoder", "radbert").load(str(encoder_folder))
    torch.testing.assert_close(encoder.model.embeddings.word_embeddings.weight, reference.model.embeddings.word_embeddings.weight)
    assert encoder.projection_trained and encoder.output_size == 48


def test_finetuning_with_the_encoder_frozen_keeps_the_reference(catalogue, dataset, tmp_path):
    model, encoder_folder = referencing_model(tmp_path)
    config = FinetuneConfig(base_model=str(model), data=str(dataset), out=str(tmp_path / "out"),
                            schedule=parse_schedule("Normal:1,Lung Opacity:1,Normal:1"), device="cpu",
                            prior_weight=0.0, train_text_encoder=False, checkpoint_every=0, learning_rate=1e-2)
    out = train(config, catalogue)
    assert not (out / "text_encoder").exists() and (out / "projection" / "model.safetensors").is_file()
    dva = json.loads((out / "dva.json").read_text())
    assert dva["encoder_source"] == str(encoder_folder) and dva["classes"] == ["Normal", "Lung Opacity"]
    trained = load_encoder(Recipe(), catalogue, inspect_model(str(out)), 48)
    base = load_encoder(Recipe(), catalogue, inspect_model(str(model)), 48)
    assert not torch.equal(trained.projection.weight, base.projection.weight)  # the projection learned


def test_a_trained_encoder_is_saved_whole(catalogue, dataset, tmp_path):
    model, _ = referencing_model(tmp_path)
    config = FinetuneConfig(base_model=str(model), data=str(dataset), out=str(tmp_path / "out"),
                            schedule=parse_schedule("Normal:1"), device="cpu", prior_weight=0.0, checkpoint_every=0)
    out = train(config, catalogue)
    assert (out / "text_encoder" / "config.json").is_file()
    assert "encoder_source" not in json.loads((out / "dva.json").read_text())


def test_naming_another_encoder_never_keeps_the_first_encoders_weights(catalogue, tmp_path):
    """An encoder's path (and tokenizer length) belongs to that encoder; a prior's strength carries over, its other
    options (the ControlNet's weights, thresholds) do not."""
    registry = tmp_path / "registry.toml"
    registry.write_text(
        '[entries.mine]\nencoder = { name = "radbert", path = "/models/RadBERT", max_length = 128 }\n'
        'prior = { name = "controlnet-canny", strength = 0.7, controlnet = "/models/cn", low_threshold = 50 }\n')
    entries = load_entries([registry])
    switched = resolve(entries, catalogue, "mine", {"encoder": "biobert", "prior": "sdedit"})
    assert switched.encoder_options == {"path": None, "max_length": 77}
    assert switched.prior_options == {"strength": 0.7, "region": ""}  # sdedit's own region: its default
    kept = resolve(entries, catalogue, "mine", {"encoder": "radbert"})
    assert kept.encoder_options == {"path": "/models/RadBERT", "max_length": 128}
    given = resolve(entries, catalogue, "mine", {"encoder": "biobert", "encoder_path": "/models/BioBERT"})
    assert given.encoder_options["path"] == "/models/BioBERT"
    options = resolve(entries, catalogue, "mine", {"encoder": "biobert", "encoder_options": {"max_length": 64}})
    assert options.encoder_options == {"path": None, "max_length": 64}
