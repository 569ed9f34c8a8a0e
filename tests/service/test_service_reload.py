"""A moved ``champion`` alias is picked up (admin endpoint, polling); failed loads keep serving."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from app_helpers import make_settings
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from bench.tiny_models import TinyRegistry, register_model, use_tracking_uri
from models.tasks import TASK_ARRHYTHMIA
from service.main import create_app

STRIP = {"fs": 360, "signal": np.sin(np.linspace(0, 20 * np.pi, 3600)).round(3).tolist()}


def _register(registry: TinyRegistry, trained: dict[str, Any], name: str, alias: str | None) -> str:
    module, card, example, metrics = trained[TASK_ARRHYTHMIA]
    return register_model(
        registry.tracking_uri, module, card, example, name, metrics=metrics, alias=alias
    )


def _register_without_card(registry: TinyRegistry, trained: dict[str, Any], name: str) -> str:
    """A real pytorch model pickled the old way, without card and weights file: refused."""
    import mlflow

    module = trained[TASK_ARRHYTHMIA][0]
    with (
        use_tracking_uri(registry.tracking_uri),
        mlflow.start_run(
            experiment_id=MlflowClient(registry.tracking_uri)
            .get_experiment_by_name("tiny-service-models")
            .experiment_id
        ),
    ):
        info = mlflow.pytorch.log_model(
            module, name="model", registered_model_name=name, serialization_format="pickle"
        )
    return str(info.registered_model_version)


def _versions(c: TestClient) -> dict[str, str]:
    return {m["task"]: m["version"] for m in c.get("/models").json()["models"]}


def test_alias_move_reload_and_failed_reload(
    tiny_registry: TinyRegistry, tiny_trained: dict[str, Any]
) -> None:
    name = "reload-arrhythmia"
    registry = MlflowClient(tracking_uri=tiny_registry.tracking_uri)
    assert _register(tiny_registry, tiny_trained, name, alias="champion") == "1"
    settings = make_settings(tiny_registry, arrhythmia_model=name, heart_disease_model="")
    with TestClient(create_app(settings)) as c:
        assert _versions(c) == {"arrhythmia": "1"}
        run_1 = c.get("/models").json()["models"][0]["run_id"]

        # Nothing moved: a reload changes nothing.
        r = c.post("/admin/reload").json()
        assert r["ok"] and r["outcomes"][0]["changed"] is False

        # A new version without the alias is not picked up ...
        assert _register(tiny_registry, tiny_trained, name, alias=None) == "2"
        assert c.post("/admin/reload").json()["outcomes"][0]["changed"] is False
        # ... until the alias moves to it.
        registry.set_registered_model_alias(name, "champion", "2")
        outcome = c.post("/admin/reload").json()["outcomes"][0]
        assert (outcome["previous_version"], outcome["version"], outcome["changed"]) == (
            "1",
            "2",
            True,
        )
        info = c.get("/models").json()["models"][0]
        assert info["version"] == "2" and info["run_id"] != run_1
        assert c.post("/predict/arrhythmia", json=STRIP).json()["model"]["version"] == "2"

        # The alias moves to a broken version: the reload fails and version 2 keeps serving.
        assert _register_without_card(tiny_registry, tiny_trained, name) == "3"
        registry.set_registered_model_alias(name, "champion", "3")
        failed = c.post("/admin/reload").json()
        assert failed["ok"] is False
        assert "not an ECG weights model" in failed["outcomes"][0]["error"]
        assert _versions(c) == {"arrhythmia": "2"}
        ready = c.get("/ready")
        assert ready.status_code == 200  # still serving
        status = ready.json()["models"][0]
        assert status["version"] == "2"
        assert "not an ECG weights model" in status["last_reload_error"]
        assert c.post("/predict/arrhythmia", json=STRIP).json()["model"]["version"] == "2"

        # Alias deleted: also a failed reload, still serving.
        registry.delete_registered_model_alias(name, "champion")
        assert c.post("/admin/reload").json()["ok"] is False
        assert c.post("/predict/arrhythmia", json=STRIP).status_code == 200

        # Back to a good version: the error clears.
        registry.set_registered_model_alias(name, "champion", "1")
        assert c.post("/admin/reload").json()["ok"] is True
        assert _versions(c) == {"arrhythmia": "1"}
        assert c.get("/ready").json()["models"][0]["last_reload_error"] is None


def test_background_polling_picks_up_the_alias(
    tiny_registry: TinyRegistry, tiny_trained: dict[str, Any]
) -> None:
    name = "polled-arrhythmia"
    _register(tiny_registry, tiny_trained, name, alias="champion")
    settings = make_settings(
        tiny_registry, arrhythmia_model=name, heart_disease_model="", reload_interval_s=0.2
    )
    with TestClient(create_app(settings)) as c:
        assert _versions(c) == {"arrhythmia": "1"}
        _register(tiny_registry, tiny_trained, name, alias="champion")
        deadline = time.monotonic() + 30
        while _versions(c) != {"arrhythmia": "2"} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _versions(c) == {"arrhythmia": "2"}


@pytest.mark.parametrize("n_clients", [3])
def test_swap_does_not_drop_in_flight_requests(client: TestClient, n_clients: int) -> None:
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = client.post("/predict/arrhythmia", json=STRIP)
            statuses.append(r.status_code)
            versions.add(r.json().get("model", {}).get("version", "?"))

    threads = [threading.Thread(target=hammer) for _ in range(n_clients)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):  # forced reloads swap in a freshly loaded copy each time
            assert client.post("/admin/reload", params={"force": "true"}).json()["outcomes"][0][
                "changed"
            ]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}
    assert versions == {"1"}


def test_unreachable_tracking_server_is_reported_at_once(tiny_registry: TinyRegistry) -> None:
    """The service starts (liveness up) and /ready names the unreachable server."""
    import socket

    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_settings(tiny_registry, mlflow_tracking_uri=uri)
    with TestClient(create_app(settings)) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503
        assert f"cannot reach the MLflow tracking server at {uri}" in r.text
