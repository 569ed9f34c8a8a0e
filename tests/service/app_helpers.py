"""Helpers of the service tests: settings for a tiny registry, a real uvicorn server in a thread.

The tiny models and their registry come from :mod:`bench.tiny_models` (also used by the serving
benchmark).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from bench.tiny_models import TinyRegistry
from service.settings import ServiceSettings

__all__ = ["make_settings", "serve_in_thread"]


def make_settings(registry: TinyRegistry, **overrides: Any) -> ServiceSettings:
    """Settings for ``registry`` that ignore the environment's ECG_SERVICE_* variables."""
    values: dict[str, Any] = {
        "mlflow_tracking_uri": registry.tracking_uri,
        "arrhythmia_model": registry.arrhythmia_name,
        "heart_disease_model": registry.heart_disease_name,
        "model_alias": registry.alias,
        "reload_interval_s": 0.0,
        "api_key": None,
    }
    values.update(overrides)
    return ServiceSettings(**values)


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (random port) in a thread; yield its base URL."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
