"""Model sources are checked before anything loads: folders need their parts, hub ids look like hub ids."""

from __future__ import annotations

import pytest

from dva.core.errors import ConfigError
from dva.core.model_folder import inspect_model


def test_a_hub_id_is_accepted_without_loading():
    source = inspect_model("CompVis/stable-diffusion-v1-4")
    assert not source.is_local and not source.is_dva_folder


def test_a_missing_relative_folder_is_not_mistaken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ConfigError, match="no such folder"):
        inspect_model("models/sd")


def test_a_folder_missing_parts_names_them(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"lacks vae/config.json, scheduler/scheduler_config.json"):
        inspect_model(str(tmp_path))


def test_no_model_and_no_bundled_model_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("dva.core.model_folder.bundled_model", lambda: None)
    with pytest.raises(ConfigError, match="No model given.*make tiny-model"):
        inspect_model(None)


def test_a_dva_folder_reports_its_encoder(tiny_pubmedclip_model):
    source = inspect_model(str(tiny_pubmedclip_model))
    assert source.dva["encoder"] == "pubmedclip" and source.has_projection


def test_a_broken_dva_json_is_named(tmp_path, tiny_sd):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd, folder)
    (folder / "dva.json").write_text("{not json")
    with pytest.raises(ConfigError, match="dva.json: not valid JSON"):
        inspect_model(str(folder))
