"""``ecg train-record``: the record model trained, tested on fold 10 once, registered, loadable.

Real PTB-XL records of the mirror (a few dozen, one epoch): this checks the path, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from training_data import build_tiny_ptbxl, ptbxl_ids_by_fold
from typer.testing import CliRunner

from pipeline.cli import app


@pytest.fixture(scope="module")
def tiny_ptbxl_with_test(ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<data>`` with raw/ptb-xl (symlinks) and processed/ptb-xl of 30 + 12 + 12 records."""
    data = tmp_path_factory.mktemp("record-data")
    shared = ptbxl_dir.parents[1]
    ids = ptbxl_ids_by_fold(shared, n_train=30, n_val=12, n_test=12)
    return build_tiny_ptbxl(shared, data, ids)


def test_train_record_registers_a_loadable_champion(
    tiny_ptbxl_with_test: Path, tmp_path: Path, ptbxl_dir: Path
) -> None:
    from mlflow import MlflowClient

    from models.record_predictor import RecordPredictor, load_heart_disease_predictor
    from pipeline.records import read_record

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train-record", "--epochs", "1", "--batch-size", "16", "--tracking-uri", uri]
    args += ["--data-dir", str(tiny_ptbxl_with_test), "--experiment", "record-test"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert "registered ecg-heart-disease v1" in out.output

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("record-test").experiment_id])
    metrics = run.data.metrics
    assert run.data.params["n_test"] == "12" and run.data.params["n_train"] == "30"
    for key in ("12-lead", "limb-6", "lead-I", "12-lead_no-demographics"):
        assert 0.0 <= metrics[f"test_hd_accuracy_{key}"] <= 1.0
        assert f"test_macro_auc_{key}" in metrics
    assert "best_val_macro_auc" in metrics and run.data.tags["ecg.task"] == "heart-disease"
    champion = client.get_model_version_by_alias("ecg-heart-disease", "champion")
    assert str(champion.version) == "1" and champion.run_id == run.info.run_id

    predictor = load_heart_disease_predictor("models:/ecg-heart-disease@champion", tracking_uri=uri)
    assert isinstance(predictor, RecordPredictor)
    rec = read_record(str(ptbxl_dir / "records100" / "00000" / "00001_lr"))
    answer = predictor.predict(rec.signal[:, :6], rec.fs, rec.leads[:6], age=56, sex=1)
    assert answer.calibration_subset == "limb-6" and answer.reduced_leads
    assert answer.heart_disease == (answer.heart_disease_probability >= answer.threshold)


def test_train_record_without_a_prepared_dataset_is_one_clear_error(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = CliRunner().invoke(
        app, ["train-record", "--data-dir", str(tmp_path), "--tracking-uri", uri]
    )
    assert out.exit_code == 2
    assert "ecg download ptb-xl" in out.output
