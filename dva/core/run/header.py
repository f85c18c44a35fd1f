"""What the manifest says about a whole run (versions, recipe, model, encoder, device, seeds, the weights'
identity) and the recipe's fingerprint, which decides whether an image already made can be resumed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from dva.core import manifest, weights
from dva.core.registry import Recipe

# The parts of a model folder (or hub snapshot) whose files decide a run's outputs (a calibration too: dva calibrate);
# the encoder's are its own.
MODEL_PARTS = ("unet", "vae", "scheduler", "dva.json", "calibration")
# Recipe keys at these defaults leave the fingerprints of runs made before the keys existed unchanged.
NEW_KEY_DEFAULTS = (("samples", 1), ("reference", "input"), ("revision", None), ("calibration", "auto"))


def describe_run(recipe: Recipe, runtime: Any, processes: int) -> dict[str, Any]:
    """The manifest's header for ``recipe`` run with ``runtime``, with its ``weights`` and ``fingerprint``."""
    recipe_dict = recipe.to_dict()
    header = run_header(recipe_dict, runtime)
    header["weights"] = weights_used(runtime)
    kept = {key: value for key, value in recipe_dict.items() if (key, value) not in NEW_KEY_DEFAULTS}
    header["fingerprint"] = manifest.fingerprint(
        kept, {"dtype": header["dtype"], "device": runtime.device.type, "prompt": runtime.prompt,
               "weights": weights.digest(header["weights"])}
    )
    header["processes"] = processes
    return header


def run_header(recipe_dict: dict[str, Any], runtime: Any) -> dict[str, Any]:
    """What the manifest says about the whole run: versions, recipe, model, encoder, device, seeds.

    ``encoder_pairing`` says whether the encoder is the one the model was trained with (``paired``), where
    each comes from, and the warning shown when it is not.
    """
    encoder = runtime.encoder
    choice = getattr(runtime, "encoder_choice", None)
    return {
        "tool": "dva run",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": manifest.versions(),
        "recipe": recipe_dict,
        "prompt": runtime.prompt,
        "model": {"location": runtime.source.location, "dva": runtime.source.dva},
        "model_note": runtime.source.dva.get("note"),
        "encoder": {
            "name": encoder.name,
            "family": encoder.family,
            "source": None if choice is None else choice.location,
            "projection": None if encoder.projection is None
            else ("trained" if encoder.projection_trained else "UNTRAINED (random, seed 0)"),
        },
        "encoder_pairing": None if choice is None else choice.as_dict(),
        "device": str(runtime.device),
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "resolution": runtime.resolution,
        "unet_calls": runtime.unet_calls(),
        "unet_evaluations": runtime.unet_evaluations(),
        "seeds": {"per_image": recipe_dict["seed"], "generator": "torch.Generator('cpu').manual_seed(seed), one per image"},
        "samples": recipe_dict.get("samples", 1),
        "processes": 1,
    }


def weights_used(runtime: Any) -> dict[str, Any]:
    """The identity of every weight file the run loaded: the model's parts, a LoRA folder, the encoder's.

    Content hashes (cached, so a large model is hashed once) or a hub commit: see :mod:`dva.core.weights`.
    An encoder that does not say where its weights came from (a plugin's) is recorded as unknown.
    """
    cache = weights.HashCache.open()
    source = runtime.source
    found = {"model": weights.identify(source.location, MODEL_PARTS, runtime.recipe.revision, cache)}
    if source.dva.get("lora_folder"):
        found["lora"] = weights.identify(str(source.dva["lora_folder"]), (), None, cache)
    encoder_sources = getattr(runtime.encoder, "weight_sources", None)
    if not encoder_sources:
        found["encoder"] = {"unknown": f"the '{runtime.encoder.name}' encoder does not say where its weights are"}
    for role, (location, parts) in (encoder_sources or {}).items():
        found[role] = weights.identify(location, parts, None, cache)
    cache.save()
    return found
