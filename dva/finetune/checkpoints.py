"""Training checkpoints: written atomically (a temporary folder renamed into place), the last K kept."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dva.core.errors import ConfigError

PREFIX = "step-"


def checkpoint_dirs(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(accelerator: Any, folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """``accelerator.save_state`` into ``folder/step-N`` atomically, then drop all but the newest ``keep``."""
    final = folder / f"{PREFIX}{step:08d}"
    partial = folder / f".partial-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "trainer.json").write_text(json.dumps({**state, "step": step}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in checkpoint_dirs(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(folder: Path, resume: str) -> Path | None:
    """``latest`` (None when there is none yet) or an explicit checkpoint folder."""
    if resume == "latest":
        found = checkpoint_dirs(folder)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer.json").is_file():
        raise ConfigError(f"--resume {resume}: not a dva checkpoint folder (no trainer.json); pass 'latest' or a step-N folder.")
    return path


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer.json").read_text())


# Settings that do not change the trained weights: where files go, how often to check or save, speed-only options.
NOT_TRAINING = frozenset({
    "out", "resume", "resume_with_new_settings", "device", "validation_every", "validation_images", "validation_count",
    "checkpoint_every", "keep_checkpoints", "cache_latents", "gradient_checkpointing",
})
PATHS = ("base_model", "data", "class_data", "encoder_path")


def training_settings(config: Any, processes: int) -> dict[str, Any]:
    """The settings of ``config`` that change the trained weights (its strategy's options among them), as JSON
    values (local paths made absolute)."""
    settings = config.settings()
    for key in PATHS:
        if settings.get(key) and Path(settings[key]).expanduser().exists():
            settings[key] = str(Path(settings[key]).expanduser().resolve())
    settings = {key: value for key, value in settings.items() if key not in NOT_TRAINING}
    if not settings.get("generate_class_images"):
        settings.pop("class_images", None)
        settings.pop("class_steps", None)
    settings.update(strategy=config.strategy, processes=processes)
    return json.loads(json.dumps(settings))


def _schedule_prefix(schedule: str, steps: int) -> list[str] | None:
    """The class of each of the first ``steps`` steps of ``schedule`` (None when the schedule is shorter)."""
    from dva.finetune.schedule import parse_schedule, phase_at, total_steps

    phases = parse_schedule(schedule)
    if total_steps(phases) < steps:
        return None
    return [phase_at(phases, step).label for step in range(steps)]


def differences(before: dict[str, Any], after: dict[str, Any], step: int) -> list[str]:
    """The settings that differ between a checkpoint at ``step`` and this run; a schedule that only changes after
    ``step`` (a run made longer) trains the same steps, so it is no difference."""
    changed = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key == "schedule" and old and new:
            done = _schedule_prefix(old, step)
            if done is not None and _schedule_prefix(new, step) == done:
                continue
        changed.append(key)
    return changed


def _show(settings: dict[str, Any], keys: list[str]) -> str:
    from dva.finetune.config import flag_for

    return ", ".join(f"{flag_for(key)} {json.dumps(settings.get(key))}" for key in keys)


@dataclass
class ResumePlan:
    """Where a run starts: the checkpoint to load (None: from scratch), its step, and the settings of earlier parts
    of the run when it was resumed with new settings."""

    checkpoint: Path | None = None
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # {"first_step", "last_step", "settings"} each
    segment_start: int = 1  # the first (1-based) step trained with this run's settings

    def state(self, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """What a checkpoint of this run records (``trainer.json``, less the step)."""
        return {**extra, "schedule": settings["schedule"], "strategy": settings["strategy"], "settings": settings,
                "history": self.history, "segment_start": self.segment_start}

    def settings_history(self, settings: dict[str, Any], total: int) -> list[dict[str, Any]] | None:
        """Each part of the run with the settings it was trained with; None when one set of settings trained it all."""
        if not self.history:
            return None
        return [*self.history, {"first_step": self.segment_start, "last_step": total, "settings": settings}]


def plan_resume(config: Any, settings: dict[str, Any]) -> ResumePlan:
    """The checkpoint ``config.resume`` names, checked against this run's ``settings`` (from :func:`training_settings`)
    before any model loads: a checkpoint trained with other settings is refused unless
    ``config.resume_with_new_settings``, and then each part's settings are kept for dva.json."""
    from dva.finetune.schedule import parse_schedule, total_steps

    if not config.resume:
        return ResumePlan()
    found = find_checkpoint(Path(config.out) / "checkpoints", config.resume)
    if found is None:
        return ResumePlan()
    state = read_state(found)
    step = int(state["step"])
    total = total_steps(parse_schedule(settings["schedule"]))
    if step > total:
        raise ConfigError(f"--resume {found}: the checkpoint is at step {step}, past the end of the schedule "
                          f"({total} steps); resume with a schedule of at least {step} steps.")
    before = state.get("settings")
    history = list(state.get("history", []))
    segment_start = int(state.get("segment_start", 1))
    changed = differences(before, settings, step) if isinstance(before, dict) else None
    if changed == []:
        return ResumePlan(found, step, history, segment_start)
    if not config.resume_with_new_settings:
        if changed is None:
            raise ConfigError(f"--resume {found}: the checkpoint does not record its settings (an older dva wrote it), "
                              "so dva cannot tell whether this run's match; add --resume-with-new-settings to go on "
                              "with this run's settings.")
        raise ConfigError(f"--resume {found}: the checkpoint was trained with {_show(before, changed)}, but this run "
                          f"asks for {_show(settings, changed)}; rerun with the checkpoint's settings, or add "
                          "--resume-with-new-settings to go on with the new ones (dva.json then records both).")
    history.append({"first_step": segment_start, "last_step": step, "settings": before})
    return ResumePlan(found, step, history, step + 1)


def load(accelerator: Any, plan: ResumePlan, optimizer: Any, lr_scheduler: Any, learning_rate: float) -> int:
    """Load the plan's checkpoint into ``accelerator`` (nothing without one); the step to go on from.

    The optimizer and scheduler states hold the learning rate they were saved with; it is set back to this run's,
    so a run resumed with a new learning rate trains with it (as dva.json then records).
    """
    if plan.checkpoint is None:
        return 0
    accelerator.load_state(str(plan.checkpoint))
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
        if "initial_lr" in group:
            group["initial_lr"] = learning_rate
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
    scheduler.base_lrs = [learning_rate for _ in scheduler.base_lrs]
    scheduler._last_lr = [learning_rate for _ in scheduler.base_lrs]
    return plan.step
