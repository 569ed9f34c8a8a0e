"""``ecg train-beats`` end to end, tiny: real mitdb + svdb records, a sqlite registry, the service.

The model is trained on three DS1 records and two svdb records dealt into two patient-grouped folds.
Default mode (all folds): one model per fold, the epoch count, temperature and S/V decision offsets
chosen on the pooled out-of-fold logits, the final model trained on every patient, registered as
``ecg-arrhythmia@champion``, loaded by the service's own loader and asked for a real MIT-BIH strip.
The quick single-fold mode (``val_fold=0``) is registered too, on a validation set that is never
compared with the all-folds one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from bench.tiny_models import mitdb_strip
from models.beat_predictor import BEAT_MODEL_KIND, BeatSequencePredictor
from models.predictor import load_predictor
from pipeline.beat_pipeline import TAG_KIND, train_beats
from pipeline.beat_train import choose_decision_rule, fit_temperature, softmax
from pipeline.cli import app
from pipeline.errors import UserError
from pipeline.registry import TAG_VALIDATION_SET
from pipeline.tracking import ensure_experiment
from service.main import create_app
from service.settings import ServiceSettings

#: Three DS1 records (106 V, 209 S, 101) and two svdb records, two folds, two epochs.
TINY: dict[str, object] = {
    "epochs": 2,
    "n_folds": 2,
    "mitdb_records": ["101", "106", "209"],
    "svdb_limit": 2,
}


@pytest.fixture(scope="module")
def trained(shared_physionet: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("beats")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # Artifacts in the temporary directory, not the working directory's ./mlartifacts.
    ensure_experiment("ecg-arrhythmia", uri, artifact_dir=root / "mlartifacts")
    result = train_beats(shared_physionet, tracking_uri=uri, test_records=["100"], **TINY)
    assert result.val_fold is None and len(result.val_records) == 5
    assert result.version == "1" and result.promoted
    assert 0.0 <= result.val_macro_f1 <= 1.0 and result.temperature > 0
    assert {"test_N_se", "test_N_ppv", "test10_N_se"} <= set(result.test_metrics)
    return {"uri": uri, "run_id": result.run_id}


def _folds(uri: str, run_id: str) -> dict[str, object]:
    from mlflow import MlflowClient

    local = MlflowClient(tracking_uri=uri).download_artifacts(run_id, "beat_folds.json")
    return dict(json.loads(Path(local).read_text()))


def test_each_fold_validates_on_patients_it_never_trained_on(trained: dict[str, str]) -> None:
    """Every fold's model is scored on whole patients it never saw; the final model sees all."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained["uri"])
    run = client.get_run(trained["run_id"])
    a = _folds(trained["uri"], trained["run_id"])
    folds = a["folds"]
    assert isinstance(folds, dict) and len(folds) == 5  # 3 mitdb + 2 svdb patients, all dealt
    fold_train, fold_val = a["fold_train_records"], a["fold_val_records"]
    assert isinstance(fold_train, dict) and isinstance(fold_val, dict)
    assert sorted(fold_val) == ["0", "1"]
    for k, val in fold_val.items():
        assert val == sorted(r for r, f in folds.items() if f == int(k))
        assert val and fold_train[k] and not set(val) & set(fold_train[k])
        assert set(val) | set(fold_train[k]) == set(folds)
    # The final model trained on every patient, for the chosen number of epochs.
    assert a["final_train_records"] == sorted(folds)
    assert "all/2 oof" in run.data.tags[TAG_VALIDATION_SET]
    best = int(run.data.metrics["best_epoch"])
    assert run.data.params["chosen_epoch"] == str(best)
    assert int(run.data.metrics["final_epochs"]) == best
    assert len(client.get_metric_history(trained["run_id"], "final_train_loss")) == best
    # Every fold trains every epoch (no early stop); the epoch is the best mean over folds.
    per_fold = [
        [m.value for m in client.get_metric_history(trained["run_id"], f"fold{k}_{name}")]
        for k in (0, 1)
        for name in ["val_argmax_macro_f1"]
    ]
    assert all(len(h) == 2 for h in per_fold)
    history = client.get_metric_history(trained["run_id"], "val_argmax_macro_f1")
    assert [m.step for m in history] == [1, 2]
    mean = np.mean(per_fold, axis=0)
    np.testing.assert_allclose([m.value for m in history], mean, rtol=1e-6)
    assert best == int(np.argmax(mean)) + 1
    assert {"fold0_val300_N_se", "fold1_val10_N_ppv", "fold0_val_macro_f1"} <= set(run.data.metrics)
    assert {"val_pooled_N_se", "val_pooled_V_ppv", "val_ece_N", "val_ece_S_before_t"} <= set(
        run.data.metrics
    )


def test_card_rule_is_refit_from_pooled_oof_logits(trained: dict[str, str]) -> None:
    """T and the S/V offsets in the card are the ones the pooled out-of-fold logits give."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained["uri"])
    oof = np.load(client.download_artifacts(trained["run_id"], "oof_logits.npz"))
    folds = _folds(trained["uri"], trained["run_id"])["folds"]
    assert isinstance(folds, dict)
    assert [folds[r] for r in oof["record"]] == oof["fold"].tolist()
    assert set(oof["strip_s"].tolist()) == {10, 300} and set(oof["fold"].tolist()) == {0, 1}
    assert set(oof["record"].tolist()) == set(folds)  # every patient, out of fold
    z, y = oof["logits"], oof["labels"]
    temperature = fit_temperature(z, y)
    offsets = choose_decision_rule(softmax(z / temperature), y)
    predictor = load_predictor("models:/ecg-arrhythmia@champion", tracking_uri=trained["uri"])
    assert isinstance(predictor, BeatSequencePredictor)
    assert predictor.card.architecture.temperature == pytest.approx(temperature)
    assert predictor.card.decision_offsets == {"S": offsets[0], "V": offsets[1]}
    metrics = client.get_run(trained["run_id"]).data.metrics
    assert metrics["val_pooled_N_n"] == float((y == 0).sum())


def test_card_holds_temperature_and_decision_offsets(trained: dict[str, str]) -> None:
    from mlflow import MlflowClient

    predictor = load_predictor("models:/ecg-arrhythmia@champion", tracking_uri=trained["uri"])
    assert isinstance(predictor, BeatSequencePredictor)
    offsets = predictor.card.decision_offsets
    assert set(offsets) == {"S", "V"} and all(-2.0 <= v <= 2.0 for v in offsets.values())
    metrics = MlflowClient(tracking_uri=trained["uri"]).get_run(trained["run_id"]).data.metrics
    assert offsets == {"S": metrics["decision_offset_S"], "V": metrics["decision_offset_V"]}
    assert predictor.card.architecture.temperature == pytest.approx(metrics["temperature"])


def test_registered_kind_and_champion(trained: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained["uri"], registry_uri=trained["uri"])
    mv = client.get_model_version_by_alias("ecg-arrhythmia", "champion")
    assert mv.tags[TAG_KIND] == BEAT_MODEL_KIND and mv.run_id == trained["run_id"]
    metrics = client.get_run(trained["run_id"]).data.metrics
    assert {"test_S_se", "test_N_ppv", "val_macro_f1", "temperature"} <= set(metrics)


def test_service_answers_nsv_per_beat(
    trained: dict[str, str], mitdb_dir: Path, tmp_path: Path
) -> None:
    predictor = load_predictor("models:/ecg-arrhythmia@champion", tracking_uri=trained["uri"])
    assert isinstance(predictor, BeatSequencePredictor)
    signal, fs, peaks, _ = mitdb_strip(mitdb_dir, "119", start_s=300.0, seconds=10.0)
    settings = ServiceSettings(
        mlflow_tracking_uri=trained["uri"],
        arrhythmia_model="ecg-arrhythmia",
        heart_disease_model="absent-heart-model",
        model_alias="champion",
        reload_interval_s=0.0,
        api_key=None,
    )
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/predict/arrhythmia",
            json={"fs": fs, "signal": signal.tolist(), "r_peaks": peaks.tolist()},
        )
    assert r.status_code == 200, r.text
    beats = r.json()["beats"]
    assert [b["sample"] for b in beats] == peaks.tolist()
    direct = predictor.predict(signal, fs, peaks)
    assert [b["label"] for b in beats] == direct.labels
    labelled = [b for b in beats if b["label"] is not None]
    assert labelled and {b["label"] for b in labelled} <= {"N", "S", "V"}
    probs = np.array([[b["probabilities"][c] for c in ("N", "S", "V")] for b in labelled])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_flat_line_is_unreadable(trained: dict[str, str]) -> None:
    predictor = load_predictor("models:/ecg-arrhythmia@champion", tracking_uri=trained["uri"])
    assert isinstance(predictor, BeatSequencePredictor)
    out = predictor.predict(np.zeros(3600), 360.0, np.arange(180, 3600, 360))
    assert all(label is None for label in out.labels)


def test_cli_help_states_promotion_rule() -> None:
    result = CliRunner().invoke(app, ["train-beats", "--help"], terminal_width=400)
    assert result.exit_code == 0
    out = " ".join(result.output.split())
    assert "single-beat" in out and "validation set" in out and "patient-grouped" in out


def test_equal_beat_model_does_not_displace_champion(
    trained: dict[str, str], shared_physionet: Path
) -> None:
    again = train_beats(shared_physionet, tracking_uri=trained["uri"], test_records=[], **TINY)
    assert again.version == "2" and not again.promoted  # same seed, same score: ties keep it
    assert again.decision is not None and again.decision.reason == "not-better"


def test_single_fold_mode_validates_on_one_fold_and_is_not_compared(
    trained: dict[str, str], shared_physionet: Path
) -> None:
    """``val_fold=0``: trained without fold 0, chosen on it, never compared with all-folds runs."""
    from mlflow import MlflowClient

    one = train_beats(
        shared_physionet, tracking_uri=trained["uri"], test_records=[], val_fold=0, **TINY
    )
    assert one.val_fold == 0 and not one.promoted
    assert one.decision is not None and one.decision.reason == "not-comparable"
    client = MlflowClient(tracking_uri=trained["uri"])
    run = client.get_run(one.run_id)
    a = _folds(trained["uri"], one.run_id)
    folds = a["folds"]
    assert isinstance(folds, dict) and a["val_fold"] == 0
    val = sorted(r for r, f in folds.items() if f == 0)
    assert one.val_records == val and run.data.params["val_records"] == ",".join(val)
    assert "fold=0/2" in run.data.tags[TAG_VALIDATION_SET]
    history = client.get_metric_history(one.run_id, "val_argmax_macro_f1")
    assert history and history[one.best_epoch - 1].value == max(m.value for m in history)
    assert {"val300_N_se", "val10_N_se", "val_ece_N", "val_pooled_S_se"} <= set(run.data.metrics)


def test_bad_fold_or_too_few_patients_is_a_cli_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train-beats", "--val-fold", "7", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--val-fold must be 'all' or in 0..4" in res.output
    res = CliRunner().invoke(
        app, ["train-beats", "--val-fold", "some", "--data-dir", str(tmp_path)]
    )
    assert res.exit_code == 2 and "must be 'all' or a fold number" in res.output
    res = CliRunner().invoke(app, ["train-beats", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no mitdb records" in res.output


def test_too_few_patients_for_the_folds(shared_physionet: Path) -> None:
    with pytest.raises(UserError, match="at least 5 are needed"):
        train_beats(shared_physionet, mitdb_records=["101", "106"], svdb_limit=0)
