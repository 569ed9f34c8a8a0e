"""Where runs go: tracking_scope, ensure_experiment and the sqlite store set-up, on real stores."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.errors import UserError
from pipeline.settings import get_settings
from pipeline.tracking import (
    check_reachable,
    ensure_experiment,
    initialise_sqlite_store,
    tracking_scope,
)


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "ECG_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ECG_MLFLOW_ARTIFACT_DIR", str(tmp_path / "mlartifacts"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_scope_points_mlflow_at_the_store_and_puts_everything_back(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_scope(uri) as got:
        assert got == uri == mlflow.get_tracking_uri() == mlflow.get_registry_uri()
        assert os.environ["MLFLOW_TRACKING_URI"] == uri  # for child processes
        exp_id = ensure_experiment("scoped", got)
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_metric("m", 1.0)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before
    # The run is in the sqlite store, and its artifacts under the configured root.
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    exp = client.get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()


def test_scope_restores_a_uri_that_was_set(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    outer = f"sqlite:///{tmp_path / 'outer.db'}"
    clean_env.setenv("MLFLOW_TRACKING_URI", outer)
    with tracking_scope(f"sqlite:///{tmp_path / 'inner.db'}"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == outer


def test_the_settings_uri_wins_over_mlflow_s_variable(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    clean_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    clean_env.setenv("ECG_MLFLOW_TRACKING_URI", mine)
    get_settings.cache_clear()
    with tracking_scope() as uri:
        assert uri == mine


def test_initialise_creates_the_tables_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    initialise_sqlite_store(uri)
    initialise_sqlite_store(uri)  # the second call finds them
    assert (tmp_path / "fresh.db").stat().st_size > 0
    assert [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()] == ["Default"]
    initialise_sqlite_store(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")  # MLflow's to report
    assert not (tmp_path / "no-such-dir").exists()


def test_a_deleted_experiment_is_a_user_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    initialise_sqlite_store(uri)
    exp_id = ensure_experiment("gone", uri)
    MlflowClient(tracking_uri=uri).delete_experiment(exp_id)
    with pytest.raises(UserError, match=r"'gone' is deleted.*restore"):
        ensure_experiment("gone", uri)


def test_a_closed_port_is_one_clear_user_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=rf"cannot reach the MLflow tracking server at .*:{port}"):
        check_reachable(f"http://127.0.0.1:{port}", timeout_s=2.0)
    check_reachable("sqlite:///not-probed.db")  # only HTTP URIs are probed
