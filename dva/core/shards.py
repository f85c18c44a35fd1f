"""Several processes share one ``dva run``: each takes every N-th input, and process 0 merges the manifest.

Started by ``torchrun`` / ``accelerate launch`` (which set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``) or
by ``dva run --num-processes N``. accelerate's :class:`PartialState` sets up the process group (gloo on the
CPU, NCCL on GPUs) and gives each process its own GPU. Every image has its own seeded generator, so which
process makes it does not change its outputs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class Shard:
    """This process's share: every ``count``-th item starting at ``index``."""

    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def take(self, items: Sequence[Item]) -> list[Item]:
        return list(items[self.index :: self.count])


def current_shard(device: str = "auto") -> Shard:
    """This process's shard; one shard of one when not started by a distributed launcher."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.device.type == "cuda":
        torch.cuda.set_device(state.device)  # "cuda" (and --device auto) now means this process's GPU
    return Shard(state.process_index, state.num_processes)


def gather(items: list[Any], shard: Shard) -> list[Any]:
    """Every process's items, concatenated in process order, on every process (a collective call)."""
    if shard.count == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def relaunch(num_processes: int, argv: Sequence[str]) -> int:
    """Run ``dva`` again under torchrun with ``num_processes`` local processes; returns its exit status."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(num_processes), "-m", "dva", *argv]
    return subprocess.call(command)
