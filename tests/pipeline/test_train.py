"""Real short trainings on tiny real datasets, tracked in a temporary sqlite MLflow store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from training_data import (
    build_tiny_mitdb,
    build_tiny_ptbxl,
    copy_dataset,
)
from typer.testing import CliRunner

from models.labels import AAMI_CLASSES, PTBXL_SUPERCLASSES, WFDB_BEAT_SYMBOLS
from models.predictor import ArrhythmiaPredictor, HeartDiseasePredictor, load_predictor
from models.segment import Segment
from pipeline.cli import app
from pipeline.dataset_store import load_dataset
from pipeline.errors import UserError
from pipeline.records import read_annotations, read_record
from pipeline.train import TrainingInterrupted, class_weights, train
from pipeline.train_config import RECOMMENDED, TrainConfig

# Tiny and fast: ~2,000 beats per epoch through a bi-GRU with 8 hidden units.
# One torch thread: on a shared 2-core CPU two threads were measured ~45x slower.

TINY = {
    "hidden_size": 8,
    "batch_size": 256,
    "class_per_epoch": 600,
    "patience": 3,
    "num_threads": 1,
}


@pytest.fixture(scope="module")
def mitdb_data(shared_physionet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mitdb(shared_physionet, tmp_path_factory.mktemp("tiny-mitdb"))


@pytest.fixture(scope="module")
def ptbxl_data(shared_physionet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ptbxl(shared_physionet, tmp_path_factory.mktemp("tiny-ptbxl"))


def _cfg(dataset: str = "mitdb", **changes: object) -> TrainConfig:
    """A TrainConfig from the dataclass defaults (not RECOMMENDED), architecture fields flat."""
    return TrainConfig(dataset=dataset).updated(**changes)


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Experiments get their artifact root under tmp_path (never ./mlartifacts of the repo)."""
    from pipeline.settings import get_settings

    monkeypatch.setenv("ECG_MLFLOW_ARTIFACT_DIR", str(tmp_path / "mlartifacts"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ECG_MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_gru_training_logs_registers_and_serves(
    mitdb_data: Path, mitdb_dir: Path, tmp_path: Path
) -> None:
    uri = _store(tmp_path)
    cfg = _cfg("mitdb", cell="gru", epochs=2, **TINY)
    result = train(cfg, data_dir=mitdb_data, tracking_uri=uri, register=True, progress=False)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    ds = load_dataset(mitdb_data / "processed" / "mitdb")
    assert params["train.cell"] == "gru" and params["train.epochs"] == "2"
    assert params["arch.cell"] == "gru" and params["arch.hidden_size"] == "8"
    assert params["train.patch_size"] == "0" and params["arch.patch_size"] == "3"  # the catalogue's
    assert params["arch.n_static"] == str(len(ds.preprocess.rr_features))
    assert params["preprocess.fs_target"] == "125.0"
    assert params["dataset_sha256"] == ds.content_sha256 == run.data.tags["ecg.dataset_sha256"]
    # Record lists are an artifact, not params (PTB-XL's would be ~50,000 characters).
    assert not {"train_records", "val_records"} & set(params)
    records = json.loads(
        Path(client.download_artifacts(result.run_id, "records.json", tmp_path)).read_text()
    )
    assert records == {"train": ["106", "209"], "val": ["223"], "test": ["100"]}

    # Per-epoch history with steps 1..2.
    for key in ("train_loss", "val_loss", "val_macro_f1", "val_S_recall", "epoch_time_s"):
        hist = client.get_metric_history(result.run_id, key)
        assert [m.step for m in hist] == [1, 2], key
    losses = [m.value for m in client.get_metric_history(result.run_id, "train_loss")]
    assert all(np.isfinite(losses))

    # Test metrics, once, on DS2 record 100 only.
    m = run.data.metrics
    for c in ("N", "S", "V", "F"):
        assert 0.0 <= m[f"test_{c}_precision"] <= 1.0
        assert 0.0 <= m[f"test_{c}_recall"] <= 1.0
    assert 0.0 <= m["test_macro_f1"] <= 1.0 and 0.0 <= m["test_accuracy"] <= 1.0
    assert m["test_n_samples"] == (ds.arrays["split"] == "test").sum()
    assert m["best_val_macro_f1"] == pytest.approx(m["final_val_macro_f1"])
    assert m["best_val_macro_f1"] == max(
        x.value for x in client.get_metric_history(result.run_id, "val_macro_f1")
    )
    assert m["model_n_parameters"] > 0 and m["model_size_bytes"] > 0

    arts = _artifacts(client, result.run_id)
    for split in ("val", "test"):
        assert {
            f"{split}/confusion_matrix.png",
            f"{split}/pr_curves.png",
            f"{split}/classification_report.json",
        } <= arts
    report = json.loads(
        Path(
            client.download_artifacts(result.run_id, "test/classification_report.json", tmp_path)
        ).read_text()
    )
    assert report["per_class"]["N"]["support"] == int(
        ((ds.arrays["split"] == "test") & (ds.arrays["labels"] == 0)).sum()
    )
    png = Path(client.download_artifacts(result.run_id, "test/confusion_matrix.png", tmp_path))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Registered and champion; the served model reads a real MIT-BIH segment.
    assert result.registration.version == "1" and result.registration.decision.promoted
    mv = client.get_model_version_by_alias("ecg-arrhythmia", "champion")
    assert str(mv.version) == "1" and mv.run_id == result.run_id
    pred = load_predictor(
        "models:/ecg-arrhythmia@champion", dst_dir=tmp_path / "dl", tracking_uri=uri
    )
    assert isinstance(pred, ArrhythmiaPredictor)
    assert pred.card.classes == AAMI_CLASSES
    assert pred.card.architecture.cell == "gru"
    rec = read_record(mitdb_dir / "119", leads=["MLII"])
    ann = read_annotations(mitdb_dir / "119")
    seg = rec.lead("MLII")[: int(20 * rec.fs)]
    peaks = ann.sample[(ann.sample < seg.shape[0]) & np.isin(ann.symbol, ["N", "V"])]
    out = pred.predict(seg, rec.fs, peaks)
    assert out.probabilities.shape == (len(peaks), len(AAMI_CLASSES))
    assert np.allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert len(out.labels) == len(peaks)


def test_lstm_ptbxl_training_logs_aucs_and_serves(
    ptbxl_data: Path, ptbxl_dir: Path, tmp_path: Path
) -> None:
    uri = _store(tmp_path)
    cfg = _cfg(
        "ptb-xl", cell="lstm", epochs=2, hidden_size=8, patch_size=10, batch_size=32,
        num_threads=1,
    )  # fmt: skip
    result = train(cfg, data_dir=ptbxl_data, tracking_uri=uri, register=True, progress=False)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["arch.patch_size"] == "10" and run.data.params["arch.cell"] == "lstm"
    hist = client.get_metric_history(result.run_id, "val_macro_auc")
    assert [h.step for h in hist] == [1, 2]
    m = run.data.metrics
    for c in PTBXL_SUPERCLASSES:
        assert f"test_{c}_precision" in m and f"test_{c}_recall" in m
    assert 0.0 <= m["test_macro_auc"] <= 1.0
    assert 0.0 <= m["test_heart_disease_auc"] <= 1.0
    assert m["best_val_macro_auc"] == pytest.approx(m["final_val_macro_auc"])
    arts = _artifacts(client, result.run_id)
    assert {"test/confusion_matrix.png", "test/pr_curves.png"} <= arts

    pred = load_predictor(
        "models:/ecg-heart-disease@champion", dst_dir=tmp_path / "dl", tracking_uri=uri
    )
    assert isinstance(pred, HeartDiseasePredictor)
    rec = read_record(ptbxl_dir / "records100" / "00000" / "00009_lr")
    p = pred.predict_many([Segment(rec.signal, rec.fs, tuple(rec.leads))])
    assert p.shape == (1, len(PTBXL_SUPERCLASSES)) and ((p >= 0) & (p <= 1)).all()


def test_same_seed_same_result(mitdb_data: Path, tmp_path: Path) -> None:
    uri = _store(tmp_path)
    cfg = _cfg("mitdb", epochs=1, **TINY)
    a = train(cfg, data_dir=mitdb_data, tracking_uri=uri, progress=False)
    b = train(cfg, data_dir=mitdb_data, tracking_uri=uri, progress=False)
    assert a.val == b.val and a.test == b.test


def test_ctrl_c_kills_the_run_and_registers_nothing(mitdb_data: Path, tmp_path: Path) -> None:
    uri = _store(tmp_path)

    def interrupt(epoch: int, batch: int) -> None:
        if batch == 0:
            raise KeyboardInterrupt

    cfg = _cfg("mitdb", epochs=2, **TINY)
    with pytest.raises(TrainingInterrupted) as info:
        train(
            cfg, data_dir=mitdb_data, tracking_uri=uri, register=True, progress=False,
            callbacks=[interrupt],
        )  # fmt: skip
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(info.value.run_id)
    assert run.info.status == "KILLED"
    assert not any(k.startswith("test_") for k in run.data.metrics)
    assert "train_loss" not in run.data.metrics  # interrupted inside epoch 1
    assert client.search_registered_models() == []
    assert client.search_logged_models(experiment_ids=[run.info.experiment_id]) == []


def test_other_errors_fail_the_run(mitdb_data: Path, tmp_path: Path) -> None:
    uri = _store(tmp_path)

    def boom(epoch: int, batch: int) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        train(
            _cfg("mitdb", epochs=1, **TINY), data_dir=mitdb_data,
            tracking_uri=uri, register=True, progress=False, callbacks=[boom],
        )  # fmt: skip
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ecg-arrhythmia").experiment_id])
    assert run.info.status == "FAILED"
    assert "disk on fire" in run.data.tags["ecg.end"]
    assert client.search_registered_models() == []


def test_val_records_override_stays_patient_wise(mitdb_data: Path) -> None:
    ds = load_dataset(mitdb_data / "processed" / "mitdb")
    splits = ds.splits(val_records=("209",))
    assert splits.records() == {"train": ["106", "223"], "val": ["209"], "test": ["100"]}
    rec = ds.arrays["record"]
    assert set(rec[splits.masks["val"]]) == {"209"}
    val = splits.split("val")
    assert val.records == ["209"] and val.x.shape[0] == splits.masks["val"].sum()
    with pytest.raises(UserError, match="100"):
        ds.splits(val_records=("100",))  # a DS2 record
    with pytest.raises(UserError, match=r"beat datasets \(mitdb\) only"):
        TrainConfig(dataset="ptb-xl", val_records=("1",))


def test_class_weights_are_capped() -> None:
    y = np.array([0] * 1000 + [1] * 10 + [2] * 1, dtype=np.int64)
    w = class_weights(y, 4, power=1.0, cap=30.0)
    assert w.tolist() == [1.0, 30.0, 30.0, 30.0]  # 100x and 1000x capped; absent class too
    w = class_weights(y, 3, power=0.5, cap=1000.0, per_class_limit=100)
    assert w == pytest.approx([1.0, 10**0.5, 10.0])
    multi = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    assert class_weights(multi, 2, power=1.0, cap=2.0) == pytest.approx([1 / 3, 2.0])


def test_cli_missing_or_corrupt_dataset_exits_2(mitdb_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    uri = _store(tmp_path)
    args = ["train", "--dataset", "mitdb", "--epochs", "1", "--tracking-uri", uri]
    res = runner.invoke(app, [*args, "--data-dir", str(tmp_path / "nothing")])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "ecg prepare mitdb" in res.output

    broken = copy_dataset(mitdb_data, "mitdb", tmp_path / "broken")
    npz = broken / "processed" / "mitdb" / "arrays.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    res = runner.invoke(app, [*args, "--data-dir", str(broken)])
    assert res.exit_code == 2 and "damaged" in res.output
    # No run was started for either.
    assert (
        MlflowClient(tracking_uri=uri).search_experiments(filter_string="name != 'Default'") == []
    )

    res = runner.invoke(app, [*args, "--data-dir", str(mitdb_data), "--model", "transformer"])
    assert res.exit_code == 2 and "unknown cell 'transformer'" in res.output


@pytest.mark.parametrize("beat_normalise", ["dataset", "zscore"])
def test_training_inputs_equal_what_serving_computes(
    mitdb_data: Path, mitdb_dir: Path, beat_normalise: str
) -> None:
    """No train/serve skew: the card's preprocessing rebuilds the training inputs from raw ECG."""
    import dataclasses

    from models.preprocessing import beat_inputs

    ds = load_dataset(mitdb_data / "processed" / "mitdb")
    cfg = _cfg(rr_features=("pre_rr_local", "post_rr_local"), beat_normalise=beat_normalise)
    mask = ds.arrays["record"] == "100"
    x_train, _ = ds.inputs(mask, cfg.input_options)
    # What train() writes into the model card, and what the predictor then computes.
    card_pre = ds.splits(options=cfg.input_options).preprocess
    expected_pre = dataclasses.replace(ds.preprocess, rr_features=cfg.rr_features)
    if beat_normalise == "zscore":
        expected_pre = dataclasses.replace(expected_pre, beat_normalise="zscore")
    assert card_pre == expected_pre
    rec = read_record(mitdb_dir / "100", leads=["MLII"])
    ann = read_annotations(mitdb_dir / "100")
    beats = np.isin(ann.symbol, sorted(WFDB_BEAT_SYMBOLS))  # RR over every beat, as prepared
    x_all = beat_inputs(rec.lead("MLII"), rec.fs, ann.sample[beats], card_pre)
    keep = np.isin(ann.sample[beats], ds.arrays["sample"][mask])
    np.testing.assert_allclose(x_all[keep], x_train, atol=1e-4)


def test_cli_trains_registers_and_the_served_model_matches_evaluation(
    mitdb_data: Path, mitdb_dir: Path, tmp_path: Path
) -> None:
    """`ecg train` with the recommended MIT-BIH options (fewer epochs and units), then parity:
    the registered model served from raw MLII gives the probabilities evaluation computed."""
    from pipeline.evaluate import predict_proba

    uri = _store(tmp_path)
    res = CliRunner().invoke(
        app,
        [
            "train", "--dataset", "mitdb", "--model", "lstm", "--epochs", "1", "--hidden-size", "8",
            "--val-records", "223", "--class-per-epoch", "600", "--num-threads", "1",
            "--no-progress", "--data-dir", str(mitdb_data), "--tracking-uri", uri,
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "registered ecg-arrhythmia v1" in res.output and "promoted to @champion" in res.output
    pred = load_predictor(
        "models:/ecg-arrhythmia@champion", dst_dir=tmp_path / "dl", tracking_uri=uri
    )
    cfg = TrainConfig.recommended("mitdb", val_records=("223",))
    assert (
        pred.card.preprocess.rr_features == cfg.rr_features == RECOMMENDED["mitdb"]["rr_features"]
    )
    assert pred.card.preprocess.beat_normalise == cfg.beat_normalise
    assert pred.card.architecture.cell == "lstm"

    ds = load_dataset(mitdb_data / "processed" / "mitdb")
    mask = ds.arrays["record"] == "100"
    expected = predict_proba(pred.module, ds.inputs(mask, cfg.input_options)[0], multilabel=False)
    rec = read_record(mitdb_dir / "100", leads=["MLII"])
    ann = read_annotations(mitdb_dir / "100")
    peaks = ann.sample[np.isin(ann.symbol, sorted(WFDB_BEAT_SYMBOLS))]
    served = pred.predict(rec.lead("MLII"), rec.fs, peaks, assess_quality=False)
    keep = np.isin(peaks, ds.arrays["sample"][mask])
    np.testing.assert_allclose(served.probabilities[keep], expected, atol=1e-4)


def test_sigint_to_ecg_train_kills_the_run(mitdb_data: Path, tmp_path: Path) -> None:
    """A real Ctrl-C (SIGINT) to a running `ecg train` process: exit 130, run KILLED, no model."""
    import os
    import signal
    import subprocess
    import sys
    import time

    uri = _store(tmp_path)
    cmd = [
        sys.executable, "-m", "pipeline.cli", "train", "--dataset", "mitdb", "--epochs", "500",
        "--patience", "500", "--hidden-size", "8", "--val-records", "223", "--num-threads", "1",
        "--no-progress", "--data-dir", str(mitdb_data), "--tracking-uri", uri,
    ]  # fmt: skip
    env = {**os.environ, "ECG_MLFLOW_ARTIFACT_DIR": str(tmp_path / "mlartifacts")}
    # Create the store's tables before the child starts: two processes initialising one new
    # sqlite file at once race in MLflow's migrations ("table ... already exists").
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while True:  # wait until training is under way: the first epoch's metrics are logged
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "training did not start within 120 s"
            exp = client.get_experiment_by_name("ecg-arrhythmia")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and "train_loss" in runs[0].data.metrics:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "marked KILLED" in err
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "KILLED"
    assert client.search_registered_models() == []


def test_cli_patch_longer_than_a_beat_is_a_clear_error(mitdb_data: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "train", "--dataset", "mitdb", "--epochs", "1", "--patch-size", "500",
            "--val-records", "223", "--data-dir", str(mitdb_data), "--tracking-uri",
            _store(tmp_path),
        ],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "--patch-size 500 is longer than one input (87 steps)" in res.output
