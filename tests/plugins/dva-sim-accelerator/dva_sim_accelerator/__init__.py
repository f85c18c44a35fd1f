"""A prior that simulates an accelerator: each call returns after ``delay`` seconds per image, sleeping.

A GPU makes a counterfactual while the CPU is free for reading and writing; sleeping frees the CPU the
same way (``time.sleep`` holds neither a core nor the GIL). Its counterfactual is its input unchanged, a
perfect counterfactual: the map is zero and the counterfactual equals the input, pixel for pixel.
``events`` records when each call generated which images, for tests of the pipeline's overlap.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dva import Option, PriorSpec, hookimpl

events: list[tuple[str, float, float, int]] = []  # ("generate", start, end, images), in call order
_lock = threading.Lock()


class SimulatedAcceleratorPrior:
    """Returns the request's images after sleeping ``delay`` seconds per image; uses no model part."""

    name = "sim-accelerator"
    deterministic = True  # draws no noise: --samples above 1 would only repeat the same image

    def __init__(self, delay: float = 0.25) -> None:
        self.delay = delay

    def load(self, parts: Any) -> None:
        """Nothing to build: the model's parts are loaded by dva and left unused."""

    def condition(self, images: Any) -> None:
        return None

    def unet_calls(self, steps: int) -> int:
        return 0

    def generate(self, request: Any) -> Any:
        started = time.perf_counter()
        count = int(request.images.shape[0])
        time.sleep(self.delay * count)
        with _lock:
            events.append(("generate", started, time.perf_counter(), count))
        return request.images.float().clone()


@hookimpl
def register_priors(register: Any) -> None:
    register(PriorSpec(
        name="sim-accelerator",
        implementation="dva_sim_accelerator:SimulatedAcceleratorPrior",
        description="test prior: returns its input after a fixed delay per image (a simulated accelerator)",
        options={"delay": Option(float, 0.25, "seconds per image", 0.0, 60.0)},
    ))
