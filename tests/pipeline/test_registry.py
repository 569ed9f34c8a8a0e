"""Model Registry with real training runs in a temporary sqlite store: champion moves only up."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from training_data import build_tiny_mitdb
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import UserError
from pipeline.registry import CHAMPION_ALIAS, promote, register_run
from pipeline.settings import get_settings
from pipeline.tracking import DEFAULT_TRACKING_URI, ensure_experiment, resolve_tracking_uri
from pipeline.train import TrainingInterrupted, train
from pipeline.train_config import TrainConfig

TINY = {"hidden_size": 8, "batch_size": 256, "class_per_epoch": 600, "num_threads": 1}


@dataclass
class Runs:
    uri: str
    a: object  # TrainResult of a GRU run
    b: object  # TrainResult of an LSTM run
    killed_run_id: str


@pytest.fixture(scope="module")
def runs(shared_physionet: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Three real runs in one store: two finished (GRU, LSTM), one interrupted (KILLED)."""
    root = tmp_path_factory.mktemp("registry")
    data = build_tiny_mitdb(shared_physionet, root / "data")
    mp = pytest.MonkeyPatch()
    mp.setenv("ECG_MLFLOW_ARTIFACT_DIR", str(root / "mlartifacts"))
    get_settings.cache_clear()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    a = train(TrainConfig(epochs=2).updated(cell="gru", **TINY), data_dir=data,
              tracking_uri=uri, progress=False)  # fmt: skip
    b = train(TrainConfig(epochs=1, seed=3).updated(cell="lstm", **TINY), data_dir=data,
              tracking_uri=uri, progress=False)  # fmt: skip

    def stop(epoch: int, batch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        train(TrainConfig(epochs=1).updated(**TINY), data_dir=data, tracking_uri=uri,
              progress=False, callbacks=[stop])  # fmt: skip
    yield Runs(uri, a, b, info.value.run_id)
    mp.undo()
    get_settings.cache_clear()


def _champion(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)


def test_champion_moves_only_on_a_better_candidate(runs: Runs) -> None:
    name = "ecg-arrhythmia-t1"
    client = MlflowClient(tracking_uri=runs.uri)
    first = register_run(runs.a.run_id, model_name=name, tracking_uri=runs.uri)
    assert first.version == "1" and first.decision.promoted
    assert first.decision.candidate_value == pytest.approx(runs.a.best_val)
    assert _champion(client, name) == "1"

    second = register_run(runs.b.run_id, model_name=name, tracking_uri=runs.uri)
    b_better = runs.b.best_val > runs.a.best_val
    assert second.decision.promoted is b_better
    assert second.decision.champion_version == "1"
    assert second.decision.champion_value == pytest.approx(runs.a.best_val)
    assert _champion(client, name) == ("2" if b_better else "1")
    mv = client.get_model_version(name, "2")
    assert mv.tags["ecg.champion_decision"] == ("promoted" if b_better else "not promoted")
    assert mv.tags["ecg.compared_with_version"] == "1"
    assert float(mv.tags["ecg.selection_value"]) == pytest.approx(runs.b.best_val)
    assert f"{runs.a.best_val:.4f}" in mv.description and f"{runs.b.best_val:.4f}" in mv.description

    # The worse of the two, registered again through the CLI: never promoted (worse or a tie).
    champ = _champion(client, name)
    loser = runs.a if b_better else runs.b
    res = CliRunner().invoke(
        app,
        ["register", "--run-id", loser.run_id, "--model-name", name, "--tracking-uri", runs.uri],
    )
    assert res.exit_code == 0, res.output
    assert "registered" in res.output and "kept @champion" in res.output
    assert _champion(client, name) == champ

    # `ecg promote` compares too; --force overrides.
    res = CliRunner().invoke(
        app, ["promote", "--model-name", name, "--version", "3", "--tracking-uri", runs.uri]
    )
    assert res.exit_code == 0 and "kept @champion" in res.output
    assert _champion(client, name) == champ
    res = CliRunner().invoke(
        app,
        ["promote", "--model-name", name, "--version", "3", "--force", "--tracking-uri", runs.uri],
    )
    assert res.exit_code == 0 and "forced" in res.output
    assert _champion(client, name) == "3"


def test_default_names_follow_the_task(runs: Runs) -> None:
    reg = register_run(runs.a.run_id, tracking_uri=runs.uri, promote_if_better=False)
    assert reg.model_name == "ecg-arrhythmia" and reg.decision is None
    mv = MlflowClient(tracking_uri=runs.uri).get_model_version("ecg-arrhythmia", reg.version)
    assert mv.run_id == runs.a.run_id and mv.tags["ecg.task"] == "arrhythmia"


def test_failed_registration_leaves_no_half_entry(runs: Runs) -> None:
    name = "ecg-arrhythmia-t2"
    client = MlflowClient(tracking_uri=runs.uri)
    register_run(runs.a.run_id, model_name=name, tracking_uri=runs.uri)
    # Damage the champion's record so that comparing with it fails after the new version exists.
    client.delete_model_version_tag(name, "1", "ecg.selection_value")
    with pytest.raises(UserError, match="selection_value"):
        register_run(runs.b.run_id, model_name=name, tracking_uri=runs.uri)
    versions = client.search_model_versions(f"name = '{name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert _champion(client, name) == "1"

    # A brand-new name whose first registration fails leaves no empty registered model either.
    with pytest.raises(UserError, match="KILLED"):
        register_run(runs.killed_run_id, model_name="ecg-never", tracking_uri=runs.uri)
    assert client.search_registered_models(filter_string="name = 'ecg-never'") == []


def test_cli_errors_exit_2(runs: Runs) -> None:
    cli = CliRunner()
    res = cli.invoke(app, ["register", "--run-id", "0" * 32, "--tracking-uri", runs.uri])
    assert res.exit_code == 2 and "no MLflow run" in res.output
    res = cli.invoke(app, ["register", "--run-id", runs.killed_run_id, "--tracking-uri", runs.uri])
    assert res.exit_code == 2 and "KILLED" in res.output
    res = cli.invoke(
        app, ["promote", "--model-name", "nope", "--version", "1", "--tracking-uri", runs.uri]
    )
    assert res.exit_code == 2 and "no version 1" in res.output
    with pytest.raises(UserError):
        promote("nope", 1, tracking_uri=runs.uri)


def test_unreachable_tracking_server_is_one_clear_line_at_once(tmp_path: Path) -> None:
    """A refused connection ends the command in seconds (MLflow alone retries for minutes)."""
    import socket

    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    cli = CliRunner()
    for args in (
        ["promote", "--model-name", "ecg-arrhythmia", "--version", "1"],
        ["register", "--run-id", "0" * 32],
        ["train", "--dataset", "mitdb", "--data-dir", str(tmp_path)],
    ):
        res = cli.invoke(app, [*args, "--tracking-uri", uri])
        assert res.exit_code == 2, res.output
        assert f"cannot reach the MLflow tracking server at {uri}" in " ".join(res.output.split())


def test_processes_starting_on_one_new_sqlite_store_do_not_race(tmp_path: Path) -> None:
    """Several `ecg` processes set up one new store at once: all succeed, the tables exist once."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import sys\n"
        "from pipeline.tracking import tracking_scope\n"
        "with tracking_scope(sys.argv[1]):\n"
        "    pass\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert MlflowClient(tracking_uri=uri).search_experiments()  # the Default experiment


# --------------------------------------------------------------------------- tracking defaults
@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.chdir(tmp_path)  # no .env file, nothing of the repo's
    for var in ("MLFLOW_TRACKING_URI", "ECG_MLFLOW_TRACKING_URI", "ECG_MLFLOW_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_tracking_uri_precedence(clean_env: pytest.MonkeyPatch) -> None:
    assert resolve_tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    clean_env.setenv("ECG_MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    get_settings.cache_clear()
    assert resolve_tracking_uri() == "http://127.0.0.1:5001"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_local_experiment_gets_an_explicit_artifact_root(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    exp_id = ensure_experiment("e1", uri)
    exp = MlflowClient(tracking_uri=uri).get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()
    assert ensure_experiment("e1", uri) == exp_id  # idempotent
    MlflowClient(tracking_uri=uri).delete_experiment(exp_id)
    with pytest.raises(UserError, match="deleted"):
        ensure_experiment("e1", uri)
