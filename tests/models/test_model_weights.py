"""A registered model is weights and a card, never code: tampered artifacts are refused, not run.

A real tiny model is logged with :func:`models.predictor.log_ecg_model` into a real sqlite MLflow
registry (artifacts in a local directory); the tests then overwrite files of the stored artifact
the way someone with write access to the registry could.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from bench.tiny_models import register_model, train_arrhythmia
from models.predictor import ArrhythmiaPredictor, load_predictor
from models.weights import WEIGHTS_FILE

URI = "models:/ecg-arrhythmia/1"


class _WritesMarker:
    """Unpickling this writes a marker file: proof that a loader ran code from the artifact."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.fixture(scope="module")
def tiny_arrhythmia() -> tuple[Any, ...]:
    """A tiny arrhythmia model (synthetic beats: these tests are about files, not accuracy)."""
    torch.set_num_threads(1)
    return train_arrhythmia(None, hidden_size=4, steps=2)


@pytest.fixture
def registry(tmp_path: Path, tiny_arrhythmia: tuple[Any, ...]) -> tuple[str, Path]:
    """``(tracking URI, artifact root)`` of a fresh sqlite registry holding ``ecg-arrhythmia/1``."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = tmp_path / "artifacts"
    MlflowClient(tracking_uri=uri).create_experiment(
        "tiny-service-models", artifact_location=artifacts.as_uri()
    )
    module, card, example, _ = tiny_arrhythmia
    register_model(uri, module, card, example, "ecg-arrhythmia")
    return uri, artifacts


def _stored(artifacts: Path, name: str) -> list[Path]:
    """Files called ``name`` in the stored artifacts of the arrhythmia model (version 1)."""
    mlmodels = list(artifacts.rglob("MLmodel"))
    assert len(mlmodels) == 1, mlmodels
    return list(mlmodels[0].parent.rglob(name))


def test_the_artifact_holds_weights_and_card_and_no_code(registry: tuple[str, Path]) -> None:
    uri, artifacts = registry
    model_dir = _stored(artifacts, "MLmodel")[0].parent
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    assert "data/ecg/weights.safetensors" in files and "data/ecg/card.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth", ".py"))], files
    flavors = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]
    assert set(flavors) == {"python_function"}  # no pickled `pytorch` flavour
    pyfunc = flavors["python_function"]
    assert pyfunc["loader_module"] == "models.mlflow_pyfunc"  # imported by name, installed
    assert "python_model" not in pyfunc and pyfunc.get("code") is None  # no code in the artifact
    predictor = load_predictor(URI, tracking_uri=uri)
    assert isinstance(predictor, ArrhythmiaPredictor)


def test_a_pickle_in_place_of_the_weights_is_refused_not_run(
    registry: tuple[str, Path], tmp_path: Path
) -> None:
    uri, artifacts = registry
    marker = tmp_path / "marker"
    (weights,) = _stored(artifacts, WEIGHTS_FILE)
    # Both ways of pickling code into a weights file: plain pickle and torch.save.
    for write in (
        lambda: weights.write_bytes(pickle.dumps(_WritesMarker(marker))),
        lambda: torch.save({"state": _WritesMarker(marker)}, weights),
    ):
        write()
        with pytest.raises(ValueError, match="not a safetensors weights file"):
            load_predictor(URI, tracking_uri=uri)
        assert not marker.exists()


def test_the_mlflow_pyfunc_loader_refuses_it_too(
    registry: tuple[str, Path], tmp_path: Path
) -> None:
    import mlflow.pyfunc

    _, artifacts = registry
    model_dir = _stored(artifacts, "MLmodel")[0].parent
    good = mlflow.pyfunc.load_model(str(model_dir))
    x = np.zeros((2, 87, 5), dtype=np.float32)
    assert np.asarray(good.predict(x)).shape == (2, 5)  # what `mlflow models serve` answers
    marker = tmp_path / "marker"
    (model_dir / "data" / "ecg" / WEIGHTS_FILE).write_bytes(pickle.dumps(_WritesMarker(marker)))
    with pytest.raises(ValueError, match="not a safetensors weights file"):
        mlflow.pyfunc.load_model(str(model_dir))
    assert not marker.exists()


def test_a_loader_switched_to_a_pickled_python_model_is_refused(
    registry: tuple[str, Path], tmp_path: Path
) -> None:
    """Rewriting the MLmodel to point at a cloudpickled ``python_model`` does not get it run."""
    uri, artifacts = registry
    model_dir = _stored(artifacts, "MLmodel")[0].parent
    marker = tmp_path / "marker"
    (model_dir / "python_model.pkl").write_bytes(pickle.dumps(_WritesMarker(marker)))
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"] = {
        "loader_module": "mlflow.pyfunc.model",
        "python_model": "python_model.pkl",
        "env": {"virtualenv": "python_env.yaml"},
    }
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ValueError, match="not an ECG weights model"):
        load_predictor(URI, tracking_uri=uri)
    assert not marker.exists()


def test_mlflow_models_serve_answers_with_the_same_logits(
    registry: tuple[str, Path], tiny_arrhythmia: tuple[Any, ...], tmp_path: Path
) -> None:
    """The serving baseline of bench.serving: ``mlflow models serve --env-manager local``."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    uri, _ = registry
    module, _, example, _ = tiny_arrhythmia
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECG_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager"]
    cmd += ["local", "--host", "127.0.0.1", "-p", str(port), "--workers", "1"]
    log = (tmp_path / "serve.log").open("wb")
    # Its own process group: mlflow starts uvicorn as a child, and both must stop.
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "mlflow models serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        r = httpx.post(
            f"http://127.0.0.1:{port}/invocations", json={"inputs": example.tolist()}, timeout=60
        )
        assert r.status_code == 200, r.text
        with torch.inference_mode():
            expected = module(torch.from_numpy(example)).numpy()
        np.testing.assert_allclose(np.asarray(r.json()["predictions"]), expected, atol=1e-5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
