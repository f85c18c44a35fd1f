"""Multi-class training schedules: ``"Normal:1200,Lung Opacity:500"`` visits classes in order.

A phase may also mix classes: ``"Normal+Lung Opacity+Cardiomegaly:1800"`` draws each sample's class
uniformly from those named (class-balanced mixed batches). A conditional model learns what its prompts
mean from mixed batches: within one batch only the text tells the classes apart, while in a one-class
phase the model can lower its loss by drifting towards that class whatever the prompt says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dva.core.errors import ConfigError


@dataclass(frozen=True)
class Phase:
    """Train on one class for a number of optimizer steps."""

    label: str
    steps: int

    @property
    def classes(self) -> tuple[str, ...]:
        """The classes this phase draws from: one, or several joined by ``+``."""
        return label_classes(self.label)

    @property
    def mixed(self) -> bool:
        return len(self.classes) > 1


MIX = "+"
REPEAT = re.compile(r"\[([^\[\]]*)\]\s*\*\s*(\d+)")


def expand_repeats(text: str) -> str:
    """``[A:10,B:10]*3`` -> ``A:10,B:10,A:10,B:10,A:10,B:10`` (groups do not nest)."""
    def expand(match: re.Match) -> str:
        count = int(match.group(2))
        if count < 1:
            raise ConfigError(f"--schedule {text!r}: '{match.group(0)}' repeats its group {count} times; use 1 or more.")
        return ",".join([match.group(1).strip()] * count)

    expanded = REPEAT.sub(expand, text)
    if "[" in expanded or "]" in expanded:
        raise ConfigError(f"--schedule {text!r}: a group must read [CLASS:STEPS,...]*TIMES, e.g. \"[Normal:20,COVID:20]*50\".")
    return expanded


def parse_schedule(text: str) -> list[Phase]:
    """Parse ``CLASS:STEPS[,CLASS:STEPS...]``; class names may contain spaces, not commas, colons or ``+``
    (which mixes classes in one phase: ``Normal+COVID:400``).

    Classes may come back (``Normal:200,COVID:200,Normal:200``), and ``[...]*N`` repeats a group of phases,
    so a model can learn several classes in short alternating phases.
    """
    phases = []
    for part in (p.strip() for p in expand_repeats(text).split(",")):
        label, sep, steps = part.rpartition(":")
        if not part or not sep or not label.strip():
            raise ConfigError(f"--schedule {text!r}: '{part}' is not CLASS:STEPS; write e.g. \"Normal:1200,Lung Opacity:500\".")
        try:
            count = int(steps)
        except ValueError:
            raise ConfigError(f"--schedule {text!r}: '{steps}' is not a whole number of steps for class '{label.strip()}'.") from None
        if count < 1:
            raise ConfigError(f"--schedule {text!r}: class '{label.strip()}' needs at least 1 step.")
        classes = [name.strip() for name in label.split(MIX)]
        if not all(classes):
            raise ConfigError(f"--schedule {text!r}: '{label.strip()}' has an empty class between '+' signs; "
                              "mix classes as \"Normal+Lung Opacity:500\".")
        phases.append(Phase(MIX.join(classes), count))
    return phases


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase that global step ``step`` (0-based) belongs to."""
    for phase in phases:
        if step < phase.steps:
            return phase
        step -= phase.steps
    raise IndexError("step beyond the schedule")


def label_classes(label: str) -> tuple[str, ...]:
    """The classes a phase label names: ``"Normal+COVID"`` -> ``("Normal", "COVID")``."""
    return tuple(part.strip() for part in label.split(MIX))


def schedule_classes(phases: list[Phase]) -> list[str]:
    """Every class the schedule trains on, in order of first appearance."""
    return list(dict.fromkeys(name for phase in phases for name in phase.classes))


def total_steps(phases: list[Phase]) -> int:
    return sum(phase.steps for phase in phases)


def format_schedule(phases: list[Phase]) -> str:
    return ",".join(f"{phase.label}:{phase.steps}" for phase in phases)
