"""Writing never stalls an accelerator: an image's outputs are written while the next images are generated.

The simulated accelerator (tests/plugins/dva-sim-accelerator) sleeps while it "generates", as a GPU leaves the
CPU free; its calls are recorded, and so is each image's write, so the test sees what ran at the same time.
benchmarks/bench_write.py measures the rates (tests/test_bench_scripts.py runs it).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import runner

dva_run = runner(steps=2, seed=0)
SLOW_WRITE_S = 0.15  # each image's write is made this much slower: a large scan's full-size outputs
GENERATE_S = 0.1  # the simulated accelerator's seconds per image


@pytest.fixture
def timed_writes(monkeypatch) -> list[tuple[str, float, float]]:
    """Each image's write as ``(key, start, end)``, made :data:`SLOW_WRITE_S` slower."""
    import dva.core.run.write as write_module

    writes: list[tuple[str, float, float]] = []
    original = write_module.write_outputs

    def slow(folder, job, *args, **kwargs):
        started = time.perf_counter()
        time.sleep(SLOW_WRITE_S)
        written = original(folder, job, *args, **kwargs)
        writes.append((job.key, started, time.perf_counter()))
        return written

    monkeypatch.setattr(write_module, "write_outputs", slow)
    return writes


def generate_and_write(sim_accelerator, tiny_sd, images, out, writer_threads: int):
    result = dva_run(sim_accelerator.catalogue, images, out, model=str(tiny_sd), prior="sim-accelerator",
                     prior_options={"delay": GENERATE_S}, batch_size=1, writer_threads=writer_threads)
    assert result.count("done") == len(images)
    return [(start, end) for _, start, end, _ in sim_accelerator.events]


def overlaps(first: tuple[float, float], second: tuple[float, float]) -> bool:
    return first[0] < second[1] and second[0] < first[1]


def test_with_writer_threads_image_i_is_written_while_image_i_plus_1_is_generated(
        sim_accelerator, tiny_sd, images, timed_writes, tmp_path):
    generations = generate_and_write(sim_accelerator, tiny_sd, images, tmp_path / "out", writer_threads=2)
    writes = sorted(timed_writes, key=lambda write: write[1])
    assert [key for key, _, _ in writes] == ["scan0", "scan1", "scan2"] and len(generations) == 3
    for index in range(len(images) - 1):
        assert overlaps(writes[index][1:], generations[index + 1]), f"writing image {index} stalled the accelerator"


def test_inline_writing_writes_each_image_before_the_next_is_generated(
        sim_accelerator, tiny_sd, images, timed_writes, tmp_path):
    """The CPU's default (its cores are torch's): no overlap, the control of the test above."""
    generations = generate_and_write(sim_accelerator, tiny_sd, images, tmp_path / "out", writer_threads=0)
    writes = sorted(timed_writes, key=lambda write: write[1])
    for index in range(len(images) - 1):
        assert writes[index][2] <= generations[index + 1][0]
