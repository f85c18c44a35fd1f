"""Read the next inputs while the current batch samples, with a bounded look-ahead so memory stays flat.

Threads, not DataLoader worker processes: decoding PNG/JPEG (zlib, libjpeg), DICOM pixel handling and
OpenCV's resize release the GIL, so threads overlap them with sampling on an accelerator; and a
modality plugin's reader may return objects (NIfTI headers, affines) that would have to be pickled
between processes. At most ``depth`` inputs are read ahead, whatever the size of the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from dva.core.errors import InputError

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def prefetched(
    items: Iterable[Item], load: Callable[[Item], Loaded], workers: int = 2, depth: int = 8
) -> Iterator[tuple[Item, Loaded | InputError]]:
    """``(item, load(item))`` in input order; an InputError is yielded in place of its result, other errors
    are raised. ``workers=0`` loads each item when it is reached (no threads)."""
    if workers <= 0:
        for item in items:
            yield item, _attempt(load, item)
        return
    pending: deque[tuple[Item, Future]] = deque()
    iterator = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="dva-reader") as pool:
        try:
            for item in iterator:
                pending.append((item, pool.submit(_attempt, load, item)))
                if len(pending) >= depth:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _attempt(load: Callable[[Item], Loaded], item: Item) -> Loaded | InputError:
    try:
        return load(item)
    except InputError as error:
        return error
