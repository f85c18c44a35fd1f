"""The settings a registry entry's ``finetune`` table may hold, typed, without importing torch.

They are the fields of :class:`dva.finetune.dreambooth.FinetuneConfig` that are not taken from the
command line's data/out arguments; a test keeps the two in step.
"""

from __future__ import annotations

from typing import Any

from dva.core.errors import ConfigError
from dva.core.specs import Option

FINETUNE_OPTIONS: dict[str, Option] = {
    "strategy": Option(str, "dreambooth", "fine-tuning strategy (a registered finetuner)"),
    "schedule": Option(str, None, 'classes in order with their steps, "Normal:1200,Lung Opacity:500"'),
    "layout": Option(str, "auto"),
    "prompt_template": Option(str, "{label}"),
    "class_prompts": Option(dict, {}, "a class's own prompt, { Normal = \"Normal chest scan\" }"),
    "use_sample_prompts": Option(bool, False),
    "healthy_class": Option(str, "Normal"),
    "prompt_dropout": Option(float, 0.0, minimum=0.0, maximum=0.99),
    "snr_gamma": Option(float, 0.0, "min-SNR-gamma loss weighting (0: off; 5 is usual)", minimum=0.0, maximum=1000.0),
    "lesion_weight": Option(float, 0.0, "extra loss weight inside ground-truth lesion masks", minimum=0.0, maximum=1000.0),
    "train_text_encoder": Option(bool, True),
    "prior_weight": Option(float, 1.0, minimum=0.0, maximum=100.0),
    "class_prompt": Option(str, "chest x ray"),
    "class_images": Option(int, 100, minimum=1, maximum=100_000),
    "class_steps": Option(int, 25, minimum=1, maximum=1000),
    "learning_rate": Option(float, 5e-5, minimum=1e-12, maximum=1.0),
    "batch_size": Option(int, 2, minimum=1, maximum=4096),
    "gradient_accumulation": Option(int, 1, minimum=1, maximum=4096),
    "mixed_precision": Option(str, "no", choices=("no", "bf16", "fp16")),
    "gradient_checkpointing": Option(bool, False),
    "use_8bit_adam": Option(bool, False),
    "cache_latents": Option(bool, False),
    "max_grad_norm": Option(float, 1.0, minimum=0.0),
    "checkpoint_every": Option(int, 500, minimum=0),
    "keep_checkpoints": Option(int, 2, minimum=1),
    "seed": Option(int, 0, minimum=0),
    "placeholder_template": Option(str, "<{label}>"),
    "initializer_token": Option(str, "chest"),
    "lora_rank": Option(int, 4, minimum=1, maximum=1024),
    "lora_alpha": Option(float, 4.0, minimum=0.0),
    "lora_text_encoder": Option(bool, False),
    "validation_every": Option(int, 0, minimum=0),
    "validation_count": Option(int, 4, minimum=1),
}


def check_finetune_table(values: Any, where: str) -> dict[str, Any]:
    """Validate an entry's ``finetune`` table; only the keys given are returned (the rest stay defaults)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a table of fine-tuning settings, e.g. {{ schedule = \"Normal:1200\" }}.")
    unknown = sorted(set(values) - set(FINETUNE_OPTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown fine-tuning setting '{unknown[0]}' (known: {', '.join(sorted(FINETUNE_OPTIONS))}).")
    checked = {key: FINETUNE_OPTIONS[key].check(value, f"{where}, setting '{key}'") for key, value in values.items()}
    for label, prompt in checked.get("class_prompts", {}).items():
        if not isinstance(prompt, str):
            raise ConfigError(f"{where}, setting 'class_prompts': the prompt of '{label}' must be text.")
    return checked
