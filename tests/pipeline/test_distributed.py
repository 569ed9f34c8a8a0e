"""The multi-process (torchrun, DDP over gloo) training path on a few dozen real PTB-XL records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from training_data import build_tiny_ptbxl, ptbxl_ids_by_fold

from pipeline.dataset_store import load_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_ptbxl(ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<data>/processed/ptb-xl`` built from 36 training and 16 fold-9 records of the mirror."""
    data = tmp_path_factory.mktemp("ddp-data")
    shared = ptbxl_dir.parents[1]
    return build_tiny_ptbxl(shared, data, ptbxl_ids_by_fold(shared, n_train=36, n_val=16))


def test_torchrun_two_cpu_processes_log_one_loadable_model(
    tiny_ptbxl: Path, tmp_path: Path, ptbxl_dir: Path
) -> None:
    from mlflow import MlflowClient

    from models.record_predictor import load_record_predictor
    from pipeline.records import read_record

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--standalone", "-m", "pipeline.distributed",
        "--data-dir", str(tiny_ptbxl),
        "--epochs", "2", "--batch-size", "8", "--tracking-uri", uri, "--experiment", "ddp-test",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ddp-test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "rank 0 alone logs the run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.params["backend"] == "gloo"
    assert run.data.params["n_train"] == "36"
    history = client.get_metric_history(run.info.run_id, "val_macro_auc")
    assert [m.step for m in history] == [1, 2]
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert len(models) == 1

    predictor = load_record_predictor(f"models:/{models[0].model_id}", tracking_uri=uri)
    assert set(predictor.card.calibration) >= {"12-lead", "limb-6/no-demographics", "lead-I"}
    rec = read_record(str(ptbxl_dir / "records100" / "00000" / "00001_lr"))
    # Train/serve parity: the predictor's input is the prepared dataset's record.
    ds = load_dataset(tiny_ptbxl / "processed" / "ptb-xl")
    x, _, _ = predictor.record_inputs(rec.signal, rec.fs, rec.leads)
    np.testing.assert_allclose(x, ds.arrays["signals"][list(ds.arrays["record"]).index("1")],
                               atol=1e-5)  # fmt: skip
    full = predictor.predict(rec.signal, rec.fs, rec.leads, age=56, sex=1)
    assert set(full.probabilities) == {"NORM", "MI", "STTC", "CD", "HYP"}
    assert all(0.0 <= p <= 1.0 for p in full.probabilities.values())
    assert not full.reduced_leads and full.demographics_used
    assert full.heart_disease == (full.heart_disease_probability >= full.threshold)
    one = predictor.predict(rec.signal[:, :1], rec.fs, rec.leads[:1])
    assert one.leads_used == ("I",) and one.reduced_leads and not one.demographics_used
    assert one.calibration_subset == "lead-I/no-demographics"
    assert np.isfinite(one.heart_disease_probability)
