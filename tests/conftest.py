"""Fixtures shared by the whole suite: the PhysioNet mirror in ../shared, an HTTP server for it."""

from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_PHYSIONET = Path(
    os.environ.get("ECG_SHARED_PHYSIONET", REPO_ROOT.parent / "shared" / "physionet")
).resolve()
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _needs_shared() -> Path:
    if not (SHARED_PHYSIONET / "mitdb" / "1.0.0" / "RECORDS").exists():
        pytest.skip(f"the PhysioNet mirror is not at {SHARED_PHYSIONET} (set ECG_SHARED_PHYSIONET)")
    return SHARED_PHYSIONET


@pytest.fixture(scope="session")
def shared_physionet() -> Path:
    """``../shared/physionet`` (laid out as PhysioNet serves it); skips when absent."""
    return _needs_shared()


@pytest.fixture(scope="session")
def mitdb_dir(shared_physionet: Path) -> Path:
    """The complete MIT-BIH Arrhythmia Database 1.0.0 (read-only)."""
    return shared_physionet / "mitdb" / "1.0.0"


@pytest.fixture(scope="session")
def ptbxl_dir(shared_physionet: Path) -> Path:
    """The PTB-XL 1.0.1 subset (read-only)."""
    return shared_physionet / "ptb-xl" / "1.0.1"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_directory(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start a real HTTP server for ``root`` on 127.0.0.1 (random port); returns it and its URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="session")
def physionet_mirror(shared_physionet: Path) -> Iterator[str]:
    """Base URL of a real HTTP server on 127.0.0.1 serving ``../shared/physionet``."""
    server, url = serve_directory(shared_physionet)
    yield url
    server.shutdown()


@pytest.fixture(autouse=True)
def _restore_mlflow_uris() -> Iterator[None]:
    """Undo any test's change to MLflow's process-wide URIs (module globals and env variables).

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export ``MLFLOW_*_URI`` for child
    processes; left behind, they would point later clients and subprocesses at another test's store.
    """
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _isolated_mlflow_artifacts(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Runs in local (sqlite) stores keep their artifacts in a temporary directory.

    Without this they would go to ``./mlartifacts`` (the pipeline's default), i.e. into the
    checkout the suite runs in. Child processes (``ecg``, notebook kernels) inherit the variable.
    """
    from pipeline.settings import get_settings

    monkeypatch.setenv("ECG_MLFLOW_ARTIFACT_DIR", str(tmp_path_factory.mktemp("mlartifacts")))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
