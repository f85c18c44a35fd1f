"""Inputs are read ahead of sampling, in order, never more than a fixed number at a time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from dva.core.errors import InputError
from dva.core.prefetch import prefetched


def test_results_come_in_input_order_with_input_errors_in_their_place():
    def load(n: int) -> int:
        time.sleep(0.01 * (5 - n % 5))  # later items finish first
        if n == 3:
            raise InputError("three is unreadable")
        return n * n

    results = list(prefetched(range(8), load, workers=3, depth=4))
    assert [item for item, _ in results] == list(range(8))
    assert [r for _, r in results if not isinstance(r, InputError)] == [0, 1, 4, 16, 25, 36, 49]
    assert str(results[3][1]) == "three is unreadable"


def test_at_most_depth_items_are_read_ahead_whatever_the_number_of_inputs():
    lock, loaded, consumed, ahead = threading.Lock(), [0], [0], []

    def load(n: int) -> int:
        with lock:
            loaded[0] += 1
            ahead.append(loaded[0] - consumed[0])
        return n

    for _ in prefetched(range(200), load, workers=2, depth=5):
        consumed[0] += 1
    assert max(ahead) <= 5 + 1


def test_other_errors_are_raised():
    def load(n: int) -> int:
        raise MemoryError("too big")

    with pytest.raises(MemoryError):
        list(prefetched(range(3), load, workers=2))


def test_a_run_reading_ahead_on_threads_writes_what_an_inline_run_writes(catalogue, tiny_radbert_model, images, tmp_path):
    from dva.core.registry import load_entries, resolve
    from dva.core.run import run

    recipe = resolve(load_entries(), catalogue, "default", {"model": str(tiny_radbert_model), "steps": 2})
    inline = run(recipe, [str(p) for p in images], tmp_path / "inline", catalogue, reader_threads=0)
    ahead = run(recipe, [str(p) for p in images], tmp_path / "ahead", catalogue, reader_threads=2)
    assert [j.key for j in ahead.jobs] == [j.key for j in inline.jobs]
    for job in inline.jobs:
        a = load_file(str(tmp_path / "inline" / job.key / "attribution.safetensors"))
        b = load_file(str(tmp_path / "ahead" / job.key / "attribution.safetensors"))
        assert all(np.array_equal(a[k], b[k]) for k in a)
