"""Textual inversion with any registered encoder: one new token per class, nothing else trained.

Each class of the schedule gets a placeholder token (``placeholder_template``, made safe: lower case, no spaces,
e.g. ``<lung-opacity>``), added to the encoder's tokenizer and embedding matrix and initialised from
``initializer_token``'s embedding. Only those embedding rows learn: the UNet, the VAE, the rest of the encoder and
its projection are frozen, and because the embedding matrix is one tensor, the gradients of its other rows are
zeroed before every step and the rows themselves copied back after it (AdamW's weight decay touches every row), so
every other weight stays byte-identical. Works with WordPiece (BERT family) and BPE (CLIP) tokenizers. No prior
preservation: the diffusion model does not change.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from dva.core.errors import ConfigError
from dva.finetune.output import save_model_folder
from dva.finetune.state import Parts, TrainingRun
from dva.finetune.strategy import Strategy

EMBEDS_FILE = "learned_embeds.safetensors"


class TextualInversion(Strategy):
    """One token per class in its own phase, learned under accelerate's autocast with everything else frozen."""

    name = "textual-inversion"
    prior_preservation = False
    autocast = True

    def __init__(self, placeholder_template: str = "<{label}>", initializer_token: str = "chest") -> None:
        super().__init__(placeholder_template=placeholder_template, initializer_token=initializer_token)
        self.template, self.initializer = placeholder_template, initializer_token
        self.placeholders: dict[str, str] = {}
        self.prompts: dict[str, str] = {}
        self.new_ids: list[int] = []
        self.original: torch.Tensor | None = None
        self.frozen_rows: torch.Tensor | None = None

    def check(self, config: Any) -> None:
        """Refuse what one token per class cannot learn; name each class's placeholder and prompt."""
        if config.use_sample_prompts:
            raise ConfigError("--use-sample-prompts: textual inversion learns one token per class from the class "
                              "prompt; drop the flag.")
        if config.use_8bit_adam:
            raise ConfigError("--use-8bit-adam: textual inversion trains a few embedding rows only; drop the flag.")
        mixed = next((phase.label for phase in config.schedule if phase.mixed), None)
        if mixed:
            raise ConfigError(f"--schedule: textual inversion learns one token per class in its own phase; "
                              f"split '{mixed}' into one phase per class.")
        labels = self.labels(config)
        self.placeholders = {label: placeholder_for(self.template, label) for label in labels}
        self.prompts = {label: class_prompt(config, label, self.placeholders[label]) for label in labels}

    def labels(self, config: Any) -> list[str]:
        return list(dict.fromkeys(phase.label for phase in config.schedule))

    def loss_config(self, config: Any) -> Any:
        """The loss and the saved prompts read the placeholder prompts; nothing preserves a prior."""
        return dataclasses.replace(config, class_prompts=self.prompts, use_sample_prompts=False, prior_weight=0.0)

    def adapt(self, parts: Parts, config: Any) -> None:
        self.new_ids = add_placeholders(parts.encoder, self.placeholders, self.initializer)

    def setup(self, parts: Parts, config: Any) -> tuple[str, ...]:
        encoder = parts.encoder
        parts.unet.requires_grad_(False).eval()
        parts.vae.requires_grad_(False).eval()
        encoder.requires_grad_(False)
        encoder.eval()  # the frozen encoder as at inference (no dropout); only the new rows learn
        embedding = encoder.model.get_input_embeddings().weight
        embedding.requires_grad_(True)
        self.original = embedding.detach().clone()
        self.frozen_rows = torch.ones(embedding.shape[0], dtype=torch.bool, device=embedding.device)
        self.frozen_rows[self.new_ids] = False
        if config.gradient_checkpointing:
            encoder.model.gradient_checkpointing_enable()
        return ("encoder",)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"placeholders": self.placeholders}  # other tokens: their embedding rows cannot carry over

    @staticmethod
    def _embedding(run: TrainingRun) -> torch.Tensor:
        return run.raw_encoder.model.get_input_embeddings().weight

    def before_clip(self, run: TrainingRun) -> None:
        embedding = self._embedding(run)
        if embedding.grad is not None:
            embedding.grad[self.frozen_rows] = 0

    def after_step(self, run: TrainingRun) -> None:
        embedding = self._embedding(run)
        with torch.no_grad():  # weight decay moved every row: put the others back, bit for bit
            embedding[self.frozen_rows] = self.original[self.frozen_rows]

    def save(self, run: TrainingRun) -> None:
        """The whole model folder (the encoder with its new rows and tokenizer) and the learned vectors alone."""
        from safetensors.torch import save_file

        save_model_folder(run)
        embedding = self._embedding(run)
        learned = {token: embedding[token_id].detach().to("cpu", torch.float32).clone().contiguous()
                   for token, token_id in zip(self.placeholders.values(), self.new_ids)}
        save_file(learned, str(run.out / EMBEDS_FILE))

    def describe(self, run: TrainingRun) -> dict[str, Any]:
        return {"placeholders": self.placeholders, "initializer_token": self.initializer, "learned_embeddings": EMBEDS_FILE,
                "settings": dataclasses.replace(run.config, prior_weight=0.0).settings()}  # none: the UNet is frozen


def placeholder_for(template: str, label: str) -> str:
    """The class's placeholder token: the template applied to the label, lower case, runs of spaces as '-'."""
    try:
        token = template.format(label=label)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(
            f"--placeholder-template {template!r}: cannot be filled in ({error}); write e.g. '<{{label}}>'."
        ) from None
    token = re.sub(r"\s+", "-", token.strip()).lower()
    if not token or token == label.strip().lower():
        raise ConfigError(
            f"--placeholder-template {template!r}: gives {token!r} for class '{label}', which is "
            "not a new word; write e.g. '<{label}>'."
        )
    return token


def class_prompt(config: Any, label: str, placeholder: str) -> str:
    """The class's training prompt: its --class-prompt (where it names '{label}') or the template, on the placeholder."""
    given = config.class_prompts.get(label)
    if given:
        prompt = given.replace("{label}", placeholder)
        if placeholder not in prompt:
            raise ConfigError(
                f"--class-prompt {label}={given!r}: textual inversion needs the class's placeholder in its prompt; "
                f"write '{{label}}' where {placeholder} belongs, e.g. '{{label}} chest x ray'."
            )
        return prompt
    prompt = config.prompt_template.format(label=placeholder)
    if placeholder not in prompt:
        raise ConfigError(f"--prompt-template {config.prompt_template!r}: textual inversion needs '{{label}}' in it.")
    return prompt


def _initializer_id(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    unknown = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1 or (unknown is not None and ids[0] == unknown):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ConfigError(
            f"--initializer-token {word!r}: must be one token of the encoder's vocabulary, but it tokenizes to "
            f"{len(ids)} token(s) {pieces}; pick a single word the tokenizer knows (e.g. 'chest', or a shorter one)."
        )
    return int(ids[0])


def _new_token_ids(tokenizer: Any, placeholders: dict[str, str]) -> list[int]:
    """Add the placeholders to the tokenizer, each a new word that tokenizes to itself alone; their ids."""
    tokens = list(placeholders.values())
    if len(set(tokens)) != len(tokens):
        raise ConfigError(f"--placeholder-template gives the same token to two classes ({placeholders}); include '{{label}}'.")
    vocabulary = tokenizer.get_vocab()
    taken = [token for token in tokens if token in vocabulary]
    if taken:
        raise ConfigError(f"Placeholder token(s) {taken} are already in the encoder's vocabulary; change --placeholder-template.")
    if tokenizer.add_tokens(tokens) != len(tokens):
        raise ConfigError(f"The tokenizer refused placeholder token(s) {tokens}; change --placeholder-template.")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    for token, token_id in zip(tokens, ids):
        if tokenizer.encode(f"a {token} b", add_special_tokens=False).count(token_id) != 1:
            raise ConfigError(f"Placeholder {token!r} does not tokenize to its own token; change --placeholder-template.")
    return list(ids)


def add_placeholders(encoder: Any, placeholders: dict[str, str], initializer: str) -> list[int]:
    """Add the placeholder tokens to the tokenizer and embedding matrix, rows set to the initializer's; their ids."""
    tokenizer, model = encoder.tokenizer, encoder.model
    init_id = _initializer_id(tokenizer, initializer)
    ids = _new_token_ids(tokenizer, placeholders)
    try:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    except TypeError:  # transformers without mean_resizing
        model.resize_token_embeddings(len(tokenizer))
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        for token_id in ids:
            weight[token_id] = weight[init_id]
    return ids
