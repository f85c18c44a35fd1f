"""The settings schema: every setting of ``dva run`` (and ``dva compare``) and of a ``finetune`` table, declared once.

A :class:`Setting` names a setting, types it with an :class:`~dva.core.specs.Option` (type, default, the flag's
help, bounds, choices) and says where it lives: a key of registry entries, a field of the resolved recipe, a
command-line flag, or a flag that sets one option of a component (``--strength`` is the prior's ``strength``).
From these tuples come the recipe dataclass (:func:`recipe_fields`), the keys a registry entry may hold
(:func:`entry_keys`), the settings left out of the resume fingerprint (:data:`NOT_IN_FINGERPRINT`), the click
options (``dva.cli.options``) and the docs' settings tables (``dva.cli.settings_docs``). The ``finetune`` table's
settings (:data:`FINETUNE_SETTINGS`) live here too, so the registry checks them without importing the trainer.

Adding a run setting is one :class:`Setting` in :data:`RUN_SETTINGS` (a flag for it: its name in the command's
list of flags, ``dva.cli.run.RUN_FLAGS``), then ``python -m dva.cli.settings_docs`` to rewrite the docs' tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dva.core.errors import ConfigError
from dva.core.specs import Option

REFERENCES = ("input", "reconstruction")
DTYPES = ("auto", "float32", "float16", "bfloat16")
PATH_KINDS = ("any", "file", "folder")


@dataclass(frozen=True)
class Setting:
    """One setting, declared once.

    ``name`` is its registry key and recipe field, or the command's parameter name for a flag of its own.
    ``option.help`` is the flag's ``--help`` text; ``doc`` the docs tables' text (Markdown, default: the help);
    ``unset`` says what a ``None`` default means ("the model's own"), for the docs and ``dva registry show``.

    Where it lives: ``in_entry``, a registry entry may set it (and a flag's value is checked with the entry's,
    naming the flag); ``in_recipe``, a field of the resolved recipe; ``component``, it names a registered
    component (the recipe also gets ``<name>_options``); ``target``, the flag sets one option of a component
    (``"prior.strength"``) or some of them (``"prior"``, a ``dict``); ``outputs``, it changes an image's outputs,
    so it is part of the resume fingerprint.

    The flag: ``flag`` (``"--steps"``, an on/off pair ``"--compile/--no-compile"``, or ``""`` for none);
    ``flag_default``, the flag defaults to ``option.default`` (shown by ``--help``), else an unset flag is
    ``None`` and the entry's value stays; ``path`` (``"any"``, ``"file"``, ``"folder"``), the flag takes a path;
    ``multiple``, repeatable (a ``dict`` option is repeatable ``KEY=VALUE`` pairs, ``example`` showing one);
    ``required``, the command needs it.
    """

    name: str
    option: Option
    flag: str = ""
    doc: str = ""
    unset: str = ""
    in_entry: bool = True
    in_recipe: bool = True
    component: bool = False
    target: str = ""
    outputs: bool = True
    flag_default: bool = False
    path: str | None = None
    multiple: bool = False
    required: bool = False
    metavar: str | None = None
    example: str = ""

    def __post_init__(self) -> None:
        if self.path is not None and self.path not in PATH_KINDS:
            raise ValueError(f"setting {self.name}: path must be one of {PATH_KINDS}, not {self.path!r}")
        if self.target.count(".") > 1:
            raise ValueError(f"setting {self.name}: target must be 'component' or 'component.option'")

    @property
    def flags(self) -> tuple[str, ...]:
        """The flag's spellings: ``("--compile", "--no-compile")`` for a pair."""
        return tuple(self.flag.split("/")) if self.flag else ()

    @property
    def text(self) -> str:
        """What the docs say of it."""
        return self.doc or self.option.help


RUN_SETTINGS: tuple[Setting, ...] = (
    Setting("entry", Option(str, "default", "Registry entry to start from."), "--entry", flag_default=True,
            in_entry=False, in_recipe=False, doc="a recipe from `registry.toml` (`dva registry show` lists them)"),
    Setting("registries", Option(str, None, "Extra registry file."), "--registry", path="file", multiple=True,
            in_entry=False, in_recipe=False,
            doc="an extra registry file of your own (repeatable; also `$DVA_REGISTRY`; see "
            "[registry.md](registry.md))"),
    Setting("description", Option(str, ""), outputs=False, doc="shown by `dva registry show`"),
    Setting("extends", Option(str, None), in_recipe=False, doc="start from another entry"),
    Setting("model", Option(str, None, "Stable Diffusion folder or hub id, or a dva model folder."), "--model",
            unset="dva's bundled tiny model",
            doc="Stable Diffusion folder or hub id, or a dva model folder (see [models.md](models.md)); none: dva's "
            "bundled tiny model, which knows only synthetic phantoms ([tiny-model.md](tiny-model.md))"),
    Setting("revision", Option(str, None, "Hub revision (branch, tag or commit) of a hub --model; recorded in the "
            "manifest."), "--revision", unset="main", doc="the hub revision (branch, tag or commit) of a hub model; "
            "refused for a local folder; recorded in the manifest"),
    Setting("modality", Option(str, "chest-xray", "Modality of the inputs (chest-xray, or a plugin's); default: "
            "chosen by their extension."), "--modality", component=True,
            doc="`chest-xray` or a plugin's (`brain-mri`; `dva plugins` lists modalities); without one, the modality "
            "whose file extensions the inputs have (see [Inputs](usage.md#inputs))"),
    Setting("modality_options", Option(dict, None, "A modality option (e.g. brain-mri's slices=40:60), repeatable."),
            "--modality-option", in_entry=False, in_recipe=False, target="modality", metavar="KEY=VALUE",
            example="slices=40:60",
            doc="a modality option, e.g. `slices=40:60` for `brain-mri`"),
    Setting("bit_depth", Option(int, None, "Bits that hold data in 16-bit images (e.g. 12); default: detected from the "
            "values, and said.", 1, 16), "--bit-depth", in_entry=False, in_recipe=False, target="modality.bit_depth",
            unset="detected", doc="bits that hold data in 16-bit images (see [Inputs](usage.md#inputs))"),
    Setting("encoder", Option(str, None, "Text encoder (radbert, biobert, pubmedclip, clip, ...); default: the model's "
            "own."), "--encoder", component=True, unset="the model's own",
            doc="`radbert`, `biobert`, `pubmedclip`, `clip`, or a plugin's; options: `path`, `max_length` (1-512, "
            "default 77)"),
    Setting("encoder_options", Option(dict, None, "Encoder options."), in_entry=False, in_recipe=False,
            target="encoder",
            doc="options of the encoder (`dva compare --encoder-option NAME.KEY=VALUE`)"),
    Setting("encoder_path", Option(str, None, "Load the encoder from this folder (or hub id) instead of its default."),
            "--encoder-path", in_entry=False, in_recipe=False, target="encoder.path", unset="the encoder's own",
            doc="load the encoder from this folder (hospitals without hub access): its `path` option"),
    Setting("prior", Option(str, "sdedit", "Image prior (sdedit, controlnet-canny, ...)."), "--prior", component=True,
            doc="`sdedit`: `strength`; `controlnet-canny`: `strength`, `controlnet`, `low_threshold`, "
            "`high_threshold`, `conditioning_scale`; `ddim-inversion`: `strength` (default 0.6), `inversion` "
            "(`unconditional` or `prompt`); all three: `region`; or a plugin's (see [usage.md](usage.md#priors-which-one-when))"),
    Setting("prior_options", Option(dict, None, "A prior option, repeatable."), "--prior-option", in_entry=False,
            in_recipe=False, target="prior", metavar="KEY=VALUE", example="low_threshold=50",
            doc="a prior option, e.g. `controlnet=/models/sd-controlnet-canny`, `low_threshold=50`"),
    Setting("strength", Option(float, None, "SDEdit strength in [0, 1]: how far the input is noised."), "--strength",
            in_entry=False, in_recipe=False, target="prior.strength", unset="the prior's",
            doc="the prior's start time as a fraction of the schedule, in [0, 1] (SDEdit's t0/T): its `strength` "
            "option"),
    Setting("region", Option(str, None, "Induce only inside this region: a lung zone ('left upper', cut from --mask) "
            "or a mask image at the model's size (blended latent diffusion)."), "--region", in_entry=False,
            in_recipe=False, target="prior.region", unset="the whole image",
            doc="only this region may change (blended latent diffusion): a lung zone (`left-upper`, cut from the "
            "`--mask` lung mask) or a mask image at the model's size: the prior's `region` option (see "
            "[usage.md](usage.md#located-induction-with---region))"),
    Setting("scheduler", Option(str, None, "Scheduler (pndm, ddim, dpm-solver++, euler, unipc); default: the model's "
            "own."), "--scheduler", component=True, unset="the model's own",
            doc="`pndm`, `ddim`, `dpm-solver++`, `euler`, `unipc`, or a plugin's"),
    Setting("steps", Option(int, 50, "Scheduler steps; img2img runs int(steps * strength) of them.", 1, 1000),
            "--steps", doc="scheduler steps; img2img runs `int(steps × strength)` of them"),
    Setting("guidance_scale", Option(float, 7.5, "Classifier-free guidance scale.", 0.0, 100.0), "--guidance-scale",
            doc="classifier-free guidance (≤ 1: none)"),
    Setting("prompt", Option(str, None, "Text the counterfactual is steered to (default: the modality's healthy "
            "prompt)."), "--prompt", unset="the model's healthy prompt, else the modality's",
            doc="text the counterfactual is steered to"),
    Setting("negative_prompt", Option(str, "", "Text steered away from."), "--negative-prompt",
            doc="text steered away from (and the unconditional side of guidance)"),
    Setting("seed", Option(int, 0, "Seed of each image's own generator.", 0, 2**63 - 1), "--seed",
            doc="seed of each image's own generator"),
    Setting("batch_size", Option(int, 1, "Images per batch, or tiles per UNet call with --tile (results do not depend "
            "on it).", 1, 4096), "--batch-size",
            outputs=False, doc="images per batch (with `--tile`: tiles per UNet call); outputs do not depend on it"),
    Setting("tile", Option(str, "off", "Full resolution: denoise overlapping tiles of the whole scan, blended at "
            "every step: off, auto (tiles of the model's size) or a tile side in pixels."), "--tile",
            doc="`off`: counterfactuals at the model's size; `auto` or a side in pixels: at the scan's own "
            "resolution, from overlapping tiles blended at every step (MultiDiffusion; see "
            "[usage.md](usage.md#full-resolution-tiling))"),
    Setting("tile_overlap", Option(float, 0.5, "Fraction of a tile's side its neighbours share (--tile).", 0.0, 0.95),
            "--tile-overlap", doc="fraction of a tile's side its neighbours share (with `--tile`)"),
    Setting("samples", Option(int, 1, "Counterfactuals per image (seeds seed..seed+K-1); the map comes from their "
            "mean, "
            "and uncertainty.png shows their per-pixel standard deviation.", 1, 64), "--samples",
            doc="counterfactuals per image, seeds `seed`…`seed+K-1`: the map comes from their mean, "
            "`uncertainty.png` shows their spread (see [usage.md](usage.md#priors-which-one-when))"),
    Setting("reference", Option(str, "input", "Subtract the counterfactual from the input (default), or from the "
            "prior's unconditional reconstruction made from the same noise: what the prompt alone changed.",
            choices=REFERENCES), "--reference",
            doc="`input`: the map is `input - counterfactual`; `reconstruction`: `reconstruction - counterfactual`, "
            "against the prior's unconditional reconstruction from the same noise"),
    Setting("calibration", Option(str, "auto", "Use the model folder's calibration (dva calibrate) when it was made "
            "with this recipe (auto), refuse to run without one (require), or never (off).",
            choices=("auto", "require", "off")), "--calibration",
            doc="`auto`: with a calibration made with this recipe in the model folder (`dva calibrate`), write "
            "`calibrated.png` and the image's `score` too; `require`: refuse to run without one; `off`: never (see "
            "[usage.md](usage.md#calibrated-maps-and-scores))"),
    Setting("fullsize", Option(str, "counterfactual", "Images written at the input's own size too: the "
            "counterfactual only (default; the full-size maps are in attribution.safetensors), or all of them.",
            choices=("counterfactual", "all")), "--fullsize",
            doc="`counterfactual`: `fullsize/` holds the counterfactual (and, for inputs above 8 bits, its 16-bit "
            "version); the full-size maps are floats in `attribution.safetensors`; `all`: every image at full size "
            "too (see [usage.md](usage.md#outputs))"),
    Setting("mask", Option(str, None, "Mask image, or a folder of masks matched to inputs by file stem."), "--mask",
            path="any", in_entry=False, in_recipe=False, unset="none: whole-image maps",
            doc="a mask image, or a folder of masks matched to inputs by file stem"),
    Setting("device", Option(str, "auto", "auto, cpu, cuda, cuda:N or mps."), "--device",
            doc="`auto` (CUDA, else MPS, else CPU), `cpu`, `cuda`, `cuda:N`, `mps`"),
    Setting("dtype", Option(str, "auto", "Compute precision.", choices=DTYPES), "--dtype",
            doc="`auto`: bf16 on CUDA (fp16 where bf16 is unsupported), fp16 on MPS, fp32 on the CPU"),
    Setting("finetune", Option(dict, None), outputs=False, unset="none",
            doc="settings for `dva finetune --entry` (strategy, schedule, learning_rate, batch_size, mixed_precision, "
            "class_prompts, ...; see [finetune.md](finetune.md))"),
    Setting("compile", Option(bool, False, "torch.compile the UNet (GPU)."), "--compile/--no-compile", outputs=False,
            doc="`torch.compile` the UNet (GPU; the first batch pays the compile time)"),
    Setting("channels_last", Option(bool, False, "Channels-last memory layout for the UNet and VAE (GPU)."),
            "--channels-last/--no-channels-last", outputs=False,
            doc="UNet and VAE in channels-last memory layout (faster convolutions on GPUs)"),
    Setting("vae_slicing", Option(bool, False, "Decode a batch one image at a time (less memory at large batch "
            "sizes)."),
            "--vae-slicing/--no-vae-slicing", outputs=False,
            doc="decode a batch one image at a time (less memory at large batch sizes)"),
    Setting("strict", Option(bool, False, "Refuse an encoder the model was not trained with (another encoder, or other "
            "weights of its own), before anything loads."), "--strict", flag_default=True, in_entry=False,
            in_recipe=False, doc="refuse, before anything loads, an encoder the model was not trained with (another "
            "encoder, or other weights of its own)"),
    Setting("out", Option(str, "dva-out", "Output folder."), "--out", path="folder", flag_default=True, in_entry=False,
            in_recipe=False, doc="output folder (see [Outputs](usage.md#outputs))"),
    Setting("num_processes", Option(int, 1, "Processes sharing the inputs on this machine (one per GPU; on the CPU, "
            "cores are shared).", 1, 1024), "--num-processes", flag_default=True, in_entry=False, in_recipe=False,
            doc="processes sharing the inputs on this machine (see [scaling.md](scaling.md))"),
)


def command_flag(name: str, option: Option, flag: str, **kwargs: Any) -> Setting:
    """A command's own flag (``--out``, ``--data``): no registry key, no recipe field."""
    return Setting(name, option, flag, in_entry=False, in_recipe=False, **kwargs)


def by_name(settings: Iterable[Setting]) -> dict[str, Setting]:
    """The settings keyed by name."""
    return {setting.name: setting for setting in settings}


def select(
    settings: Iterable[Setting], names: Iterable[str], help: dict[str, str] | None = None
) -> tuple[Setting, ...]:
    """The named settings in the order given, with a command's own ``--help`` texts where ``help`` has one."""
    from dataclasses import replace

    known, help = by_name(settings), help or {}
    return tuple(
        replace(known[name], option=replace(known[name].option, help=help[name])) if name in help else known[name]
        for name in names
    )


def entry_keys(settings: Iterable[Setting]) -> dict[str, Option]:
    """The plain (non-component) keys a registry entry may hold, with their options."""
    return {s.name: s.option for s in settings if s.in_entry and not s.component}


def recipe_fields(settings: Iterable[Setting]) -> list[tuple[str, Any, Any]]:
    """``(name, annotation, default)`` of each recipe field, in order; a component is followed by its options."""
    fields: list[tuple[str, Any, Any]] = [("entry", "str | None", None)]
    for setting in settings:
        if not setting.in_recipe:
            continue
        kind = setting.option.type.__name__
        fields.append((setting.name, kind if setting.option.default is not None else f"{kind} | None",
                       setting.option.default))
        if setting.component:
            fields.append((f"{setting.name}_options", "dict[str, Any]", {}))
    return fields


# Recipe fields that change no pixel of an image's outputs (speed, memory, labels), so a rerun may differ in them
# and still resume. ``entry`` is the name the recipe was resolved from.
NOT_IN_FINGERPRINT: tuple[str, ...] = ("entry", *(s.name for s in RUN_SETTINGS if s.in_recipe and not s.outputs))


def _train(name: str, option: Option, flag: str | None = None, **kwargs: Any) -> Setting:
    """A setting of a registry entry's ``finetune`` table, with its ``dva finetune`` flag (``None``: ``--name``)."""
    flag = "--" + name.replace("_", "-") if flag is None else flag
    return Setting(name, option, flag, **{"flag_default": bool(flag), **kwargs})


# The settings a ``finetune`` table may hold (fields of the trainer's configuration that are not its data and
# output paths), whatever the strategy. A strategy's own options (LoRA's rank, textual inversion's tokens) are
# declared by its FinetunerSpec: a table key missing here is checked against those (:func:`check_finetune_table`).
FINETUNE_SETTINGS: tuple[Setting, ...] = (
    _train("strategy", Option(str, "dreambooth", "Fine-tuning strategy."),
           doc="`dreambooth`, `lora`, `textual-inversion`, or a plugin's (its options: `--finetune-option`)"),
    _train("schedule", Option(str, None, 'Classes in order with their steps, e.g. "Normal:1200,Lung Opacity:500".'),
           flag_default=False),
    _train("layout", Option(str, "auto", "Dataset layout; see `dva plugins`.")),
    _train("prompt_template", Option(str, "{label}", "Prompt of a class, {label} is its name.")),
    _train("class_prompts", Option(dict, {}, "A class's own prompt."), "",
           doc='a class\'s own prompt, `{ Normal = "Normal chest scan" }`'),
    _train("use_sample_prompts", Option(bool, False, "Use per-image prompts of the dataset (phantoms)."),
           "--sample-prompts/--no-sample-prompts"),
    _train("healthy_class", Option(str, "Normal", "Class whose prompt `dva run` uses by default.")),
    _train("prompt_dropout", Option(float, 0.0, "Chance of an empty prompt (keeps guidance meaningful).", 0.0, 0.99)),
    _train("snr_gamma", Option(float, 0.0, "Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is usual, 0 turns it "
           "off).", 0.0, 1000.0)),
    _train("lesion_weight", Option(float, 0.0, "Extra loss weight inside the dataset's lesion masks: a lesion pixel "
           "counts 1 + W times.", 0.0, 1000.0)),
    _train("train_text_encoder", Option(bool, True), "--train-text-encoder/--freeze-text-encoder",
           doc="train the text encoder with the UNet (frozen: byte-identical; a projection trains either way)"),
    _train("prior_weight", Option(float, 1.0, "Prior-preservation loss weight (0: off); its images are the dataset's "
           "healthy class by default.", 0.0, 100.0)),
    _train("class_prompt", Option(str, None, "Prompt of the prior-preservation images (default: the healthy class's "
           "prompt)."), "--prior-prompt", unset="the healthy class's prompt"),
    _train("generate_class_images", Option(bool, False, "Prior-preservation images generated by the base model; only "
           "with the encoder it was trained with.")),
    _train("class_images", Option(int, 100, "How many images --generate-class-images makes.", 1, 100_000)),
    _train("class_steps", Option(int, 25, "Sampling steps of each generated prior-preservation image.", 1, 1000), ""),
    _train("learning_rate", Option(float, 5e-5, "", 1e-12, 1.0), doc="AdamW's learning rate (constant)"),
    _train("batch_size", Option(int, 2, "", 1, 4096), doc="images per micro-batch and process (plus as many "
           "prior-preservation images)"),
    _train("gradient_accumulation", Option(int, 1, "", 1, 4096), doc="micro-batches per optimizer step"),
    _train("mixed_precision", Option(str, "no", "", choices=("no", "bf16", "fp16")),
           doc="accelerate's mixed precision"),
    _train("gradient_checkpointing", Option(bool, False), doc="recompute activations in the backward pass "
           "(less memory, slower)"),
    _train("use_8bit_adam", Option(bool, False, "bitsandbytes' 8-bit AdamW.")),
    _train("cache_latents", Option(bool, False, "Encode the dataset with the VAE once instead of every step.")),
    _train("max_grad_norm", Option(float, 1.0, "Gradient norm clipping.", 0.0), ""),
    _train("checkpoint_every", Option(int, 500, "", 0), doc="steps between checkpoints (0: none)"),
    _train("keep_checkpoints", Option(int, 2, "", 1), doc="the newest checkpoints kept"),
    _train("seed", Option(int, 0, "", 0), doc="seed of every random draw, with the step, micro-batch and process"),
    _train("validation_every", Option(int, 0, "Every N steps, counterfactuals of held-out images with the current "
           "weights (0: never).", 0)),
    _train("validation_count", Option(int, 4, "How many validation images.", 1)),
)


def check_finetune_table(
    values: Any, where: str, strategy_options: dict[str, Option] | None = None,
    key_where: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Validate a ``finetune`` table; only the keys given are returned (the rest stay defaults).

    A key this schema lacks is checked against ``strategy_options``, the options its strategy's spec declares.
    ``key_where`` names a key in messages (a flag), instead of ``where`` and the key.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a table of fine-tuning settings, e.g. {{ schedule = \"Normal:1200\" }}.")
    options = {**(strategy_options or {}), **entry_keys(FINETUNE_SETTINGS)}
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise ConfigError(f"{where}: unknown fine-tuning setting '{unknown[0]}' (known: {', '.join(sorted(options))}).")
    name = key_where or (lambda key: f"{where}, setting '{key}'")
    checked = {key: options[key].check(value, name(key)) for key, value in values.items()}
    for label, prompt in checked.get("class_prompts", {}).items():
        if not isinstance(prompt, str):
            raise ConfigError(f"{where}, setting 'class_prompts': the prompt of '{label}' must be text.")
    return checked
