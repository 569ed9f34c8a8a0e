"""Model Registry with real training runs in a temporary sqlite store: champion moves only up."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from training_data import build_tiny_mitdb
from typer.testing import CliRunner

from models.beat_predictor import BEAT_MODEL_KIND
from models.record_predictor import MODEL_KIND as RECORD_MODEL_KIND
from pipeline.beat_pipeline import BeatTrainResult, train_beats
from pipeline.cli import app
from pipeline.errors import UserError
from pipeline.registry import (
    CHAMPION_ALIAS,
    KIND_BEAT_SEQUENCE,
    KIND_RANK,
    KIND_RECORD,
    KIND_SINGLE_BEAT,
    TAG_KIND,
    TAG_VALIDATION_SET,
    promote,
    register_run,
)
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


# --------------------------------------------------------------------------- model kinds
#: Tiny beat-sequence trainings: 3 DS1 + 2 svdb patients in two folds, one epoch, no registration.
BEATS_TINY: dict[str, object] = {
    "epochs": 1,
    "n_folds": 2,
    "mitdb_records": ["101", "106", "209"],
    "svdb_limit": 2,
    "test_records": [],
    "register": False,
}


@dataclass
class BeatRuns:
    low: BeatTrainResult  # the lower val_macro_f1 of two seeds on validation fold 0
    high: BeatTrainResult  # the higher one, same validation set
    other_fold: BeatTrainResult  # validated on fold 1: another validation set


@pytest.fixture(scope="module")
def beat_runs(runs: Runs, shared_physionet: Path) -> BeatRuns:
    """Three real beat-sequence training runs in the same store as the single-beat ones."""
    torch.set_num_threads(1)
    pair = sorted(
        (train_beats(shared_physionet, tracking_uri=runs.uri, seed=s, val_fold=0, **BEATS_TINY)
         for s in (0, 1)),
        key=lambda r: r.val_macro_f1,
    )  # fmt: skip
    other = train_beats(shared_physionet, tracking_uri=runs.uri, val_fold=1, **BEATS_TINY)
    return BeatRuns(pair[0], pair[1], other)


def test_kind_names_match_the_model_cards() -> None:
    assert KIND_BEAT_SEQUENCE == BEAT_MODEL_KIND and KIND_RECORD == RECORD_MODEL_KIND
    assert KIND_RANK[KIND_BEAT_SEQUENCE] > KIND_RANK[KIND_SINGLE_BEAT]


def test_single_beat_never_displaces_a_beat_sequence_champion(
    runs: Runs, beat_runs: BeatRuns
) -> None:
    name = "ecg-arrhythmia-kinds"
    client = MlflowClient(tracking_uri=runs.uri)
    first = register_run(beat_runs.low.run_id, model_name=name, tracking_uri=runs.uri)
    assert first.decision.promoted and _champion(client, name) == "1"
    mv = client.get_model_version(name, "1")
    assert mv.tags[TAG_KIND] == KIND_BEAT_SEQUENCE and "fold=0/2" in mv.tags[TAG_VALIDATION_SET]

    # `make train`'s single-beat models after it: registered, never champion, whatever their score.
    for single in (runs.a, runs.b):
        reg = register_run(single.run_id, model_name=name, tracking_uri=runs.uri)
        assert not reg.decision.promoted and reg.decision.reason == "outranked"
        assert client.get_model_version(name, reg.version).tags[TAG_KIND] == KIND_SINGLE_BEAT
        assert _champion(client, name) == "1"
    res = CliRunner().invoke(
        app, ["register", "--run-id", runs.a.run_id, "--model-name", name, "--tracking-uri",
              runs.uri],
    )  # fmt: skip
    assert res.exit_code == 0 and "outranks" in res.output and "kept @champion" in res.output
    assert _champion(client, name) == "1"

    # A better beat-sequence model on the same validation patients takes it ...
    assert beat_runs.high.val_macro_f1 > beat_runs.low.val_macro_f1  # two seeds differ
    better = register_run(beat_runs.high.run_id, model_name=name, tracking_uri=runs.uri)
    assert better.decision.promoted and better.decision.reason == "better"
    assert _champion(client, name) == better.version
    # ... a worse one does not ...
    worse = register_run(beat_runs.low.run_id, model_name=name, tracking_uri=runs.uri)
    assert not worse.decision.promoted and worse.decision.reason == "not-better"
    # ... and one measured on other patients is not compared by number at all.
    other = register_run(beat_runs.other_fold.run_id, model_name=name, tracking_uri=runs.uri)
    assert not other.decision.promoted and other.decision.reason == "not-comparable"
    assert "validation sets differ" in other.decision.summary()
    assert _champion(client, name) == better.version
    # --force still overrides.
    forced = promote(name, other.version, force=True, tracking_uri=runs.uri)
    assert forced.promoted and forced.forced and _champion(client, name) == other.version


def test_beat_sequence_replaces_a_single_beat_champion(runs: Runs, beat_runs: BeatRuns) -> None:
    name = "ecg-arrhythmia-upgrade"
    client = MlflowClient(tracking_uri=runs.uri)
    register_run(runs.a.run_id, model_name=name, tracking_uri=runs.uri)
    reg = register_run(beat_runs.low.run_id, model_name=name, tracking_uri=runs.uri)
    assert reg.decision.promoted and reg.decision.reason == "outranks"
    assert "outranks" in reg.decision.summary() and _champion(client, name) == reg.version


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
