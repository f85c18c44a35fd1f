"""dva finetune --strategy textual-inversion: one new token per class, every other weight byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dva.core.errors import ConfigError
from dva.finetune.trainer import train
from tests.test_finetune import config as finetune_config
from tests.test_finetune import log_rows

PARTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors")
TI_OPTIONS = ("placeholder_template", "initializer_token")


def config(model, data, out, schedule, **overrides):
    """A textual-inversion run's settings; the strategy's options (``initializer_token``, ...) go to ``options``."""
    options = {key: overrides.pop(key) for key in TI_OPTIONS if key in overrides}
    return finetune_config(model, data, out, schedule, strategy="textual-inversion", options=options, **overrides)


def embedding_key(weights: dict) -> str:
    """BERT's ``word_embeddings``, CLIP's ``token_embedding``: the input embedding matrix."""
    return next(key for key in weights if key.endswith(("word_embeddings.weight", "token_embedding.weight")))


def assert_only_new_rows_changed(base: Path, out: Path, new_rows: int) -> None:
    for part in PARTS:
        before, after = load_file(str(base / part)), load_file(str(out / part))
        assert before.keys() == after.keys()
        assert all(torch.equal(before[key], after[key]) for key in before), f"{part} changed"
    before = load_file(str(base / "text_encoder" / "model.safetensors"))
    after = load_file(str(out / "text_encoder" / "model.safetensors"))
    key = embedding_key(before)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if k != key), "an encoder weight changed"
    vocabulary = before[key].shape[0]
    assert after[key].shape[0] == vocabulary + new_rows
    assert torch.equal(after[key][:vocabulary], before[key]), "an original embedding row changed"
    if (base / "projection").is_dir():
        assert (out / "projection" / "model.safetensors").read_bytes() == (base / "projection" / "model.safetensors").read_bytes()


@pytest.mark.parametrize(("model", "initializer"), [("tiny_radbert_model", "chest"), ("tiny_sd", "x")])
def test_only_the_placeholder_rows_learn_and_the_model_runs(catalogue, dataset, images, tmp_path, request, model,
                                                             initializer):
    from transformers import AutoTokenizer

    from dva.core.registry import load_entries, resolve
    from dva.core.run import run

    base = request.getfixturevalue(model)
    out = tmp_path / "model"
    train(config(base, dataset, out, "Normal:1,Lung Opacity:1", initializer_token=initializer,
                 prompt_template="a {label} chest x ray", batch_size=1), catalogue)
    losses = [float(row["loss"]) for row in log_rows(out)]
    assert [row["class"] for row in log_rows(out)] == ["Normal", "Lung Opacity"]
    assert all(np.isfinite(losses)), losses
    info = json.loads((out / "dva.json").read_text())
    assert info["strategy"] == "textual-inversion"
    assert info["placeholders"] == {"Normal": "<normal>", "Lung Opacity": "<lung-opacity>"}
    assert info["prompts"] == {"healthy": "a <normal> chest x ray",
                               "classes": {"Normal": "a <normal> chest x ray", "Lung Opacity": "a <lung-opacity> chest x ray"}}
    assert_only_new_rows_changed(base, out, 2)

    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    weights = load_file(str(out / "text_encoder" / "model.safetensors"))
    table = weights[embedding_key(weights)]
    learned = load_file(str(out / "learned_embeds.safetensors"))
    (initial,) = tokenizer.encode(initializer, add_special_tokens=False)
    for token in ("<normal>", "<lung-opacity>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert token_id >= table.shape[0] - 2
        assert token_id in tokenizer.encode(f"a {token} chest x ray", add_special_tokens=False)
        assert torch.equal(table[token_id], learned[token])
        assert not torch.equal(table[token_id], table[initial]), f"{token} was not trained"

    recipe = resolve(load_entries(), catalogue, "default", {"model": str(out), "steps": 2})
    result = run(recipe, [str(images[0])], tmp_path / "run", catalogue)
    assert result.exit_code == 0 and result.header["prompt"] == "a <normal> chest x ray"


def test_a_resumed_run_ends_with_the_embeddings_of_an_uninterrupted_one(catalogue, tiny_radbert_model, dataset, tmp_path):
    """A checkpoint after step 1 (class Normal), the run interrupted after step 2 (Lung Opacity), then resumed."""
    settings = dict(checkpoint_every=1, keep_checkpoints=1, prompt_dropout=0.2, batch_size=1)
    train(config(tiny_radbert_model, dataset, tmp_path / "whole", "Normal:1,Lung Opacity:1", **settings), catalogue)

    def interrupt(step, total, label, loss):
        if step == 2:
            raise KeyboardInterrupt

    interrupted = config(tiny_radbert_model, dataset, tmp_path / "resumed", "Normal:1,Lung Opacity:1", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, catalogue, on_step=interrupt)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-00000001"]
    assert not (tmp_path / "resumed" / "dva.json").exists()
    interrupted.resume = "latest"
    train(interrupted, catalogue)
    assert [int(r["step"]) for r in log_rows(tmp_path / "resumed")] == [1, 2]  # each step once
    whole = load_file(str(tmp_path / "whole" / "text_encoder" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "text_encoder" / "model.safetensors"))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize(("model", "initializer"), [("tiny_radbert_model", "chest x ray"), ("tiny_sd", "chest")])
def test_an_initializer_of_several_tokens_is_refused_before_training(catalogue, dataset, tmp_path, request, model,
                                                                     initializer):
    out = tmp_path / "model"
    with pytest.raises(ConfigError, match="--initializer-token .*one token"):
        train(config(request.getfixturevalue(model), dataset, out, "Normal:2", initializer_token=initializer), catalogue)
    assert not (out / "train_log.csv").exists()


def test_a_class_prompt_without_the_placeholder_is_refused(catalogue, tiny_radbert_model, dataset, tmp_path):
    with pytest.raises(ConfigError, match="placeholder"):
        train(config(tiny_radbert_model, dataset, tmp_path / "model", "Normal:1", class_prompts={"Normal": "normal chest"}),
              catalogue)


def test_a_mixed_class_phase_is_refused_before_training(catalogue, tiny_radbert_model, dataset, tmp_path):
    """Each class learns its own token in its own phase, so "A+B" has no token to learn."""
    out = tmp_path / "model"
    with pytest.raises(ConfigError, match="split 'Normal\\+Lung Opacity' into one phase per class"):
        train(config(tiny_radbert_model, dataset, out, "Normal+Lung Opacity:2"), catalogue)
    assert not out.exists()


def test_textual_inversion_from_the_command_line(tiny_radbert_model, dataset, tmp_path, capsys):
    from dva.cli import main

    out = tmp_path / "model"
    with pytest.raises(SystemExit) as done:
        main(["finetune", "--strategy", "textual-inversion", "--model", str(tiny_radbert_model), "--data", str(dataset),
              "--schedule", "Normal:1", "--out", str(out), "--prior-weight", "0", "--device", "cpu",
              "--initializer-token", "chest", "--prompt-template", "a {label} chest x ray"])
    assert done.value.code == 0, capsys.readouterr().err
    info = json.loads((out / "dva.json").read_text())
    assert info["strategy"] == "textual-inversion" and info["prompts"]["healthy"] == "a <normal> chest x ray"


def test_the_learned_token_lowers_the_loss_on_the_same_noise(catalogue, tiny_radbert_model, tmp_path):
    """Textual inversion's loss, step by step, against a run whose token cannot move (the smallest learning rate
    dva takes, 1e-12: the token moves by about that much).

    Every random draw of a step is seeded by (seed, step), so both runs see the same images, noise and
    timesteps: the only difference is the learned embedding. On a tiny random base model the prompt
    barely steers the UNet (the loss falls by about 1e-5), far below the step-to-step noise of a plain
    "loss goes down" check; paired with the frozen run the improvement is visible at almost every step.
    """
    from dva.datasets.phantoms import make_phantoms

    data = make_phantoms(tmp_path / "phantoms", 4, 64, seed=3)
    losses = {}
    for learning_rate in (1e-12, 0.05):
        steps: list[float] = []
        train(config(tiny_radbert_model, data, tmp_path / f"lr-{learning_rate}", "Lung Opacity:16",
                     learning_rate=learning_rate, initializer_token="chest", cache_latents=True),
              catalogue, on_step=lambda step, total, label, loss: steps.append(loss))
        losses[learning_rate] = np.array(steps)
    frozen, learned = losses[1e-12], losses[0.05]
    assert frozen[0] == learned[0], "the first step runs before any update"
    assert np.mean(learned[1:] < frozen[1:]) >= 0.8, (frozen, learned)
