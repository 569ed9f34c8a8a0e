"""Both notebooks executed top to bottom, on real data and a real (tiny) registered champion."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from training_data import build_tiny_mitdb

from pipeline.train import train
from pipeline.train_config import TrainConfig

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _execute(
    name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return nb


def _stream_text(nb: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )


def test_explore_data_runs_on_the_local_data(
    shared_physionet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = _execute("01-explore-data.ipynb", {"ECG_RAW_DIR": str(shared_physionet)}, monkeypatch)
    text = _stream_text(nb)
    assert "share of record 232: 75%" in text  # 1,382 of DS2's 1,837 S beats
    # Follows the mirror: the records of the full table (21,837) that are on disk.
    on_disk = sum(1 for _ in (shared_physionet / "ptb-xl" / "1.0.1").glob("records100/*/*_lr.hea"))
    assert f"{on_disk} of 21837 records on disk" in text
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 4


def test_review_models_runs_against_a_registered_champion(
    shared_physionet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = build_tiny_mitdb(shared_physionet, tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for cell in ("gru", "lstm"):
        cfg = TrainConfig(dataset="mitdb", epochs=1, class_per_epoch=300).updated(
            cell=cell, hidden_size=8
        )
        train(cfg, data_dir=data_dir, tracking_uri=uri, register=True, progress=False)
    nb = _execute(
        "02-review-models.ipynb",
        {"MLFLOW_TRACKING_URI": uri, "ECG_DATA_DIR": str(data_dir)},
        monkeypatch,
    )
    text = _stream_text(nb)
    assert "ecg-arrhythmia v" in text and "@champion" in text
    assert "agreement" in text
    # The misclassified-beats example reads the run's validation records (the tiny dataset's
    # training records are 106 and 209): a patient the model never trained on.
    assert "validation records of run" in text and "['223']" in text
    assert "record 223:" in text
    assert "'n_beats'" in text  # the API's answer summary
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
