"""Training checkpoints: written atomically (a temporary folder renamed into place), the last K kept."""

from __future__ import annotations

import json
import shutil
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


def resume(accelerator: Any, folder: Path, resume_from: str | None) -> int:
    """Load the checkpoint ``resume_from`` names (``latest`` or a folder) into ``accelerator``; the step to go on from."""
    if not resume_from:
        return 0
    found = find_checkpoint(folder, resume_from)
    if found is None:
        return 0
    accelerator.load_state(str(found))
    return int(read_state(found)["step"])
