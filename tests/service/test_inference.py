"""Where a prediction runs: inline when small and the gate is free, else in the thread pool."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.inference import Gate, run_inference
from service.settings import ServiceSettings


def _where(gate: threading.BoundedSemaphore, n_samples: int, settings: ServiceSettings) -> str:
    loop_thread = threading.get_ident()

    def work(held: Gate) -> str:
        with held:
            assert not gate.acquire(blocking=False)  # the gate is held while the work runs
            return "inline" if threading.get_ident() == loop_thread else "thread"

    return asyncio.run(run_inference(work, n_samples, settings, gate))


def test_small_requests_run_inline_and_large_ones_in_a_thread() -> None:
    settings = ServiceSettings(inline_max_samples=3600)
    gate = threading.BoundedSemaphore(1)
    assert _where(gate, 3600, settings) == "inline"
    assert _where(gate, 3601, settings) == "thread"
    assert _where(gate, 10, ServiceSettings(inline_max_samples=0)) == "thread"
    assert gate.acquire(blocking=False)  # released after each
    gate.release()


def test_a_busy_gate_sends_small_requests_to_wait_in_a_thread() -> None:
    settings = ServiceSettings(inline_max_samples=3600)
    gate = threading.BoundedSemaphore(1)
    gate.acquire()
    timer = threading.Timer(0.2, gate.release)  # another prediction finishing
    timer.start()
    assert _where(gate, 10, settings) == "thread"
    timer.join()


def test_an_error_releases_the_gate() -> None:
    gate = threading.BoundedSemaphore(1)

    def fail(held: Gate) -> None:
        raise ValueError("bad segment")

    for n in (10, 10**6):  # inline and in a thread
        with pytest.raises(ValueError, match="bad segment"):
            asyncio.run(run_inference(fail, n, ServiceSettings(), gate))
        assert gate.acquire(blocking=False)
        gate.release()
