"""Where a prediction runs: on the event loop when it is small, in the thread pool otherwise.

A 10-s strip costs a few milliseconds of CPU. Handing it to a worker thread costs more than it
saves on a small machine: the hand-off itself, and the event loop and the worker then contend for
the GIL on every numpy call (measured with ``bench.serving``: about 2 ms more CPU per strip with
4 clients). So a request of at most ``settings.inline_max_samples`` samples runs inline when the
inference gate is free at once; a larger one, or one that would have to wait for the gate, goes
to the thread pool as before, so the event loop is never blocked for long nor on a lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

from service.settings import ServiceSettings

__all__ = ["Gate", "run_inference"]

T = TypeVar("T")

#: What a prediction holds while it runs: the inference gate, or nothing when already held.
Gate = AbstractContextManager[Any]


async def run_inference(
    work: Callable[[Gate], T],
    n_samples: int,
    settings: ServiceSettings,
    gate: threading.BoundedSemaphore,
) -> T:
    """Run ``work(gate)`` inline when small and the gate is free, else in the thread pool.

    Parameters
    ----------
    work : callable
        The prediction; it enters the context manager it is given around its model calls
        (inline it is a no-op: the gate is already held for the whole call).
    n_samples : int
        Samples in the request (all leads and items together).
    settings : ServiceSettings
        ``inline_max_samples`` (0: always the thread pool).
    gate : threading.BoundedSemaphore
        The inference gate (``settings.max_concurrent_inference`` predictions at a time).
    """
    if n_samples <= settings.inline_max_samples and gate.acquire(blocking=False):
        try:
            return work(contextlib.nullcontext())
        finally:
            gate.release()
    return await run_in_threadpool(work, gate)
