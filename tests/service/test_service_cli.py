"""``ecg serve`` and ``uvicorn service.main:app`` serve over HTTP; importing has no side effects."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.tiny_models import TinyRegistry

REPO = Path(__file__).resolve().parents[2]
STRIP = {"fs": 360, "signal": [0.0, 0.1, 1.2, 0.1, 0.0] * 100}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(registry: TinyRegistry, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECG_SERVICE_", "MLFLOW_"))}
    env.update(ECG_SERVICE_MLFLOW_TRACKING_URI=registry.tracking_uri, **extra)
    return env


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            return httpx.get(f"{url}/ready", timeout=5)
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError("server did not answer in time")


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).with_name("ecg")), "serve", "--host", "127.0.0.1", "--port"],
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port"],
    ],
    ids=["ecg serve", "uvicorn"],
)
def test_server_commands(tiny_registry: TinyRegistry, command: list[str]) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*command, str(port)],
        cwd=REPO,
        env=_env(tiny_registry, ECG_SERVICE_API_KEY="k1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = _wait_ready(url, proc)
        assert ready.status_code == 200, ready.text
        assert httpx.post(f"{url}/predict/arrhythmia", json=STRIP).status_code == 401
        r = httpx.post(
            f"{url}/predict/arrhythmia", json=STRIP, headers={"X-API-Key": "k1"}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"]["version"] == "1"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    # Requests were logged (without the signal values).
    assert "POST /predict/arrhythmia 200" in out.decode()


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    # A broken setting only fails when an app is built, not when the module is imported.
    code = (
        "import service.main, service.routes, service.settings\n"
        "try:\n"
        "    service.main.create_app()\n"
        "except Exception as err:\n"
        "    print('create_app failed:', type(err).__name__)\n"
    )
    env = {**os.environ, "ECG_SERVICE_MAX_BODY_BYTES": "not-a-number"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "create_app failed: ValidationError" in out.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written (no mlruns/, no mlflow.db)
