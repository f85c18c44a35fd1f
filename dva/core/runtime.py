"""Device, dtype and assembly: turn a resolved recipe into loaded components.

Everything component-specific is looked up through the catalogue; this module only wires the
Stable Diffusion parts, the encoder (with its projection) and the prior together.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import torch

from dva.core.errors import ConfigError
from dva.core.model_folder import MAX_RESOLUTION, ModelSource, inspect_model
from dva.core.registry import Recipe

log = logging.getLogger("dva")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_LOADED: ContextVar[dict[tuple, Any] | None] = ContextVar("dva_loaded_components", default=None)


@contextlib.contextmanager
def reuse_components() -> Iterator[None]:
    """Inside this block :func:`assemble` loads each model's UNet and VAE, and each encoder, only once.

    ``dva compare`` runs many recipes over the same model; loading a full-size UNet takes seconds to
    minutes, and the loaded parts are never changed by a run (LoRA models, which are, are not reused).
    """
    token = _LOADED.set({})
    try:
        yield
    finally:
        _LOADED.reset(token)


def _reused(key: tuple, load: Callable[[], Any]) -> Any:
    loaded = _LOADED.get()
    if loaded is None:
        return load()
    if key not in loaded:
        loaded[key] = load()
    return loaded[key]


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU. An unavailable explicit choice is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name}: not a device name; use auto, cpu, cuda, cuda:N or mps.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: Apple MPS is not available here; use --device cpu.")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA GPUs that support it (else fp16), fp16 on MPS, fp32 on the CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name == "float16" and device.type == "cpu":
        raise ConfigError("--dtype float16 is not supported on the CPU; use float32 or bfloat16.")
    return DTYPES[name]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def load_diffusion_parts(source: ModelSource, device: torch.device, dtype: torch.dtype,
                         revision: str | None = None) -> tuple[Any, Any, dict]:
    """UNet, VAE and the scheduler config of a model folder or hub id (at ``revision``, for a hub id)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers import DDIMScheduler

    if revision and source.is_local:
        raise ConfigError(f"--revision {revision}: the model '{source.location}' is a local folder, which has no hub "
                          "revisions; drop --revision, or pass the model's hub id.")
    pinned = {"revision": revision} if revision else {}
    try:
        unet = UNet2DConditionModel.from_pretrained(source.location, subfolder="unet", torch_dtype=dtype, **pinned)
        vae = AutoencoderKL.from_pretrained(source.location, subfolder="vae", torch_dtype=dtype, **pinned)
        scheduler_config = DDIMScheduler.load_config(source.location, subfolder="scheduler", **pinned)
    except (OSError, ValueError, EnvironmentError) as error:
        where = "folder" if source.is_local else "hub id"
        raise ConfigError(
            f"Cannot load the model {where} '{source.location}' ({_first_line(error)}); pass a complete local "
            "Stable Diffusion folder with --model, or connect to the model hub."
        ) from error
    unet.to(device).eval().requires_grad_(False)
    vae.to(device).eval().requires_grad_(False)
    return unet, vae, dict(scheduler_config)


def build_scheduler(recipe: Recipe, catalogue: Any, config: dict) -> Any:
    """The recipe's scheduler built from the model's scheduler config, or the model's own one."""
    import diffusers

    if config.get("steps_offset", 1) != 1:
        log.warning(
            "The model's scheduler config has steps_offset %s (an old checkpoint); SD v1 uses 1, and "
            "diffusers behaves differently with other values.", config.get("steps_offset")
        )
    if recipe.scheduler is None:
        scheduler_class = getattr(diffusers, config.get("_class_name", ""), None)
        if scheduler_class is None:
            raise ConfigError(f"The model's scheduler {config.get('_class_name')!r} is unknown to diffusers; pass --scheduler.")
        return scheduler_class.from_config(config)
    spec = catalogue.get("scheduler", recipe.scheduler)
    return spec.from_config(config, **recipe.scheduler_options)


@dataclass(frozen=True)
class EncoderChoice:
    """Which encoder a recipe loads and from where, and whether the model was trained with exactly it.

    A UNet learns the embeddings of the encoder it is trained with. Any other encoder (another one, or
    other weights of the same one) gives embeddings it has never seen, even at the same width, so the
    counterfactuals mean nothing until the pair is fine-tuned together.
    """

    name: str
    source: str | None
    subfolder: str | None
    tokenizer_subfolder: str | None
    projection_source: str | None
    max_length: int
    model: str
    trained_name: str
    trained_source: str | None  # None: the model folder does not say which weights it was trained with
    paired: bool

    @property
    def location(self) -> str | None:
        """Where the encoder's weights are read: the source, with its subfolder inside a model folder."""
        if self.source is None or not self.subfolder:
            return self.source
        return f"{self.source.rstrip('/')}/{self.subfolder}"

    @property
    def mismatch(self) -> str | None:
        """Why the encoder is not the model's own (a clause), or None when it is."""
        if self.paired:
            return None
        if self.name != self.trained_name:
            trained_from = f" from {self.trained_source}" if self.trained_source else ""
            return (f"{self.model} was trained with the '{self.trained_name}' encoder{trained_from}, "
                    f"not '{self.name}' from {self.location}")
        if self.trained_source is None:
            return (f"{self.model} does not record which '{self.trained_name}' weights it was trained with, "
                    f"so dva cannot tell whether {self.location} holds them")
        return (f"{self.model} was trained with the '{self.trained_name}' weights in {self.trained_source}, "
                f"not those in {self.location}")

    @property
    def warning(self) -> str | None:
        """The sentence the terminal, the manifest and the report show for an encoder the model was not trained with."""
        if self.paired:
            return None
        return (f"Encoder not trained with this model: {self.mismatch}; its UNet has never seen these embeddings, "
                "so the counterfactuals and maps mean nothing until the pair is fine-tuned together "
                "(dva finetune, docs/finetune.md).")

    def as_dict(self) -> dict[str, Any]:
        """What ``manifest.json`` records as ``encoder_pairing``."""
        return {"paired": self.paired, "encoder": self.name, "source": self.location,
                "trained_encoder": self.trained_name, "trained_source": self.trained_source,
                "warning": self.warning}


def trained_encoder_source(source: ModelSource) -> str | None:
    """Where the weights of the encoder the model was trained with are: the folder's (or hub repository's)
    ``text_encoder/``, else dva.json's ``encoder_source``; None when the model does not say."""
    if source.has_text_encoder:
        return f"{source.location.rstrip('/')}/text_encoder"
    return source.dva.get("encoder_source") or None


def _same_weights(location: str | None, trained: str | None) -> bool:
    """Whether two encoder locations hold the same weights: the same place, or local folders whose weight
    files are byte-identical (a copy). A hub id is compared by name only (nothing is downloaded)."""
    import filecmp
    from pathlib import Path

    if location is None or trained is None:
        return False
    if location.rstrip("/") == trained.rstrip("/"):
        return True
    first, second = Path(location).expanduser(), Path(trained).expanduser()
    if not (first.is_dir() and second.is_dir()):
        return False
    if first.resolve() == second.resolve():
        return True

    def weights(folder: Path) -> dict[str, Path]:
        return {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")}

    mine, theirs = weights(first), weights(second)
    return bool(mine) and mine.keys() == theirs.keys() and all(
        filecmp.cmp(mine[name], theirs[name], shallow=False) for name in mine)


def choose_encoder(recipe: Recipe, catalogue: Any, source: ModelSource) -> EncoderChoice:
    """Decide which encoder the recipe loads and from where, without loading anything.

    The model folder's own encoder unless the recipe names another or a path; ``encoder_source`` in a
    dva folder's dva.json names a frozen encoder it does not carry. A dva folder asked for another
    encoder without weights for it is a ConfigError.
    """
    path = recipe.encoder_options.get("path")
    max_length = recipe.encoder_options.get("max_length") or 77
    trained = source.dva.get("encoder") if source.is_dva_folder else "clip"
    name = recipe.encoder or trained
    spec = catalogue.get("encoder", name)
    subfolder = tokenizer_subfolder = None
    if path is not None:
        location = path
    elif name == trained and source.has_text_encoder:
        location, subfolder, tokenizer_subfolder = source.location, "text_encoder", "tokenizer"
    elif source.is_dva_folder and name != trained:
        raise ConfigError(
            f"Model folder {source.location} was trained with encoder '{trained}', not '{name}'; drop --encoder, "
            "or pass --encoder-path to load another encoder's weights."
        )
    else:
        location = (source.dva.get("encoder_source") if name == trained else None) or spec.default_source
    projection = f"{source.location}/projection" if source.has_projection and name == trained else None
    choice = EncoderChoice(name, location, subfolder, tokenizer_subfolder, projection, max_length, source.location,
                           trained, trained_encoder_source(source), paired=False)
    paired = name == trained and _same_weights(choice.location, choice.trained_source)
    return replace(choice, paired=paired)


def require_trained_encoder(recipe: Recipe, catalogue: Any) -> EncoderChoice:
    """``--strict``: refuse, before anything loads, an encoder the model was not trained with."""
    choice = choose_encoder(recipe, catalogue, inspect_model(recipe.model))
    if not choice.paired:
        raise ConfigError(
            f"--strict: the encoder is not the one the model was trained with ({choice.mismatch}); fine-tune the "
            "pair with dva finetune (docs/finetune.md) and run that model, or use the model's own encoder."
        )
    return choice


def load_chosen_encoder(choice: EncoderChoice, catalogue: Any, cross_attention_dim: int) -> Any:
    """Load the encoder :func:`choose_encoder` chose and fit it to the UNet's width."""
    spec = catalogue.get("encoder", choice.name)
    kwargs: dict[str, Any] = {"max_length": choice.max_length, "source": choice.source}
    if choice.subfolder:
        kwargs.update(subfolder=choice.subfolder, tokenizer_subfolder=choice.tokenizer_subfolder)
    if choice.projection_source:
        kwargs["projection_source"] = choice.projection_source
    encoder = spec.resolve().from_pretrained(spec, **kwargs)
    encoder.fit_to(cross_attention_dim)
    return encoder


def load_encoder(recipe: Recipe, catalogue: Any, source: ModelSource, cross_attention_dim: int) -> Any:
    """The text encoder: the model folder's own unless the recipe names another or a path."""
    return load_chosen_encoder(choose_encoder(recipe, catalogue, source), catalogue, cross_attention_dim)


@dataclass
class Runtime:
    """Loaded components for one recipe, ready to generate."""

    recipe: Recipe
    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    encoder: Any
    prior: Any
    resolution: int
    prompt: str
    encoder_choice: EncoderChoice | None = None  # what was loaded, and whether the model was trained with it

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``(1, L, D)`` of the prompt and the negative prompt, computed once per run."""
        embeddings = self.encoder.encode([self.prompt, self.recipe.negative_prompt or ""], self.device)
        embeddings = embeddings.to(self.dtype)
        return embeddings[:1], embeddings[1:]

    def unet_calls(self) -> int:
        return self.prior.unet_calls(self.recipe.steps)

    def unet_evaluations(self) -> int:
        """UNet evaluations per image, a batch doubled by classifier-free guidance counted twice: the prior's
        guided calls twice with guidance (scale above 1), once more for ``--reference reconstruction`` (the same
        run, unguided), all ``--samples`` times; calls the prior makes unguided and shares with the
        reconstruction (its optional ``unguided_calls(steps)``, e.g. ddim-inversion's inversion) count once."""
        steps = self.recipe.steps
        calls = self.prior.unet_calls(steps)
        shared = getattr(self.prior, "unguided_calls", lambda _: 0)(steps)
        guided = 2 if self.recipe.guidance_scale > 1 else 1
        again = 1 if self.recipe.reference == "reconstruction" else 0
        return self.recipe.samples * (shared + (calls - shared) * (guided + again))


def quiet_libraries() -> None:
    """dva draws its own progress; silence the per-file progress bars of diffusers and transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def assemble(recipe: Recipe, catalogue: Any) -> Runtime:
    """Load and wire every component the recipe names."""
    from dva.core.contracts import ModelParts

    quiet_libraries()
    source = inspect_model(recipe.model)
    device = pick_device(recipe.device)
    dtype = pick_dtype(recipe.dtype, device)
    prior = catalogue.get("prior", recipe.prior).create(**recipe.prior_options)
    lora = source.dva.get("lora_folder")
    reuse = _reused if not lora else (lambda key, load: load())
    unet, vae, scheduler_config = reuse(("parts", source.location, recipe.revision, device, dtype),
                                        lambda: load_diffusion_parts(source, device, dtype, recipe.revision))
    scheduler = build_scheduler(recipe, catalogue, scheduler_config)

    choice = choose_encoder(recipe, catalogue, source)

    def encoder_on_device() -> Any:
        encoder = load_chosen_encoder(choice, catalogue, int(unet.config.cross_attention_dim))
        if lora:
            from dva.core.adapters import apply_lora

            apply_lora(unet, encoder, lora)
        return encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)

    encoder_key = ("encoder", source.location, recipe.encoder, tuple(sorted(recipe.encoder_options.items())), device, dtype)
    encoder = reuse(encoder_key, encoder_on_device)
    unet = speed_options(recipe, unet, vae)
    prior.load(ModelParts(unet, vae, scheduler, device, dtype))
    resolution = model_resolution(unet, vae)
    return Runtime(recipe, source, device, dtype, encoder, prior, resolution, healthy_prompt(recipe, source, catalogue),
                   actually_loaded(choice, encoder))


def actually_loaded(choice: EncoderChoice, encoder: Any) -> EncoderChoice:
    """``choice`` with the folder the encoder's weights were really read from (transformers records it; a
    ``package:NAME`` source becomes the installed folder), so manifests name what ran."""
    read_from = getattr(getattr(getattr(encoder, "model", None), "config", None), "_name_or_path", None)
    if not isinstance(read_from, str) or not read_from or read_from == choice.source:
        return choice
    return replace(choice, source=read_from)


def speed_options(recipe: Recipe, unet: Any, vae: Any) -> Any:
    """The recipe's speed options on the loaded parts; returns the UNet to sample with (compiled or not).

    PyTorch's scaled-dot-product attention is diffusers' default already (``AttnProcessor2_0``).
    """
    if recipe.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if recipe.vae_slicing:
        vae.enable_slicing()
    else:
        vae.disable_slicing()
    if recipe.compile:
        return torch.compile(unet, mode="max-autotune-no-cudagraphs", fullgraph=False)
    return unet


def model_resolution(unet: Any, vae: Any) -> int:
    """Image side in pixels: the UNet's latent size times the VAE's downsampling factor.

    A config asking for more than ``MAX_RESOLUTION`` (a hub model's, which is not checked before it loads)
    is refused here, before any image is allocated at that size.
    """
    resolution = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    if not 1 <= resolution <= MAX_RESOLUTION:
        raise ConfigError(f"The model's configs make {resolution}-pixel images, not a size between 1 and "
                          f"{MAX_RESOLUTION} (unet sample_size {unet.config.sample_size}); restore its configs.")
    return resolution


def healthy_prompt(recipe: Recipe, source: ModelSource, catalogue: Any) -> str:
    """The recipe's prompt, else the healthy prompt the model was trained with, else the modality's."""
    if recipe.prompt is not None:
        return recipe.prompt
    trained = (source.dva.get("prompts") or {}).get("healthy")
    return trained or catalogue.get("modality", recipe.modality).healthy_prompt
