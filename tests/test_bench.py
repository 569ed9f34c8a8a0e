"""The benchmarks' own helpers stay runnable (the benchmarks themselves are long: not run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "pipeline"))
from training_data import build_tiny_mitdb

from bench.served_peaks import peak_offsets, score_as_served
from models.labels import MITDB_SYMBOL_TO_AAMI, WFDB_BEAT_SYMBOLS
from models.predictor import ArrhythmiaPredictor, load_predictor
from pipeline.records import read_annotations
from pipeline.train import train
from pipeline.train_config import TrainConfig


def test_served_peaks_scores_whole_records_from_detected_peaks(
    shared_physionet: Path, tmp_path: Path
) -> None:
    data_dir = build_tiny_mitdb(shared_physionet, tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig(dataset="mitdb", epochs=1, class_per_epoch=300).updated(hidden_size=8)
    res = train(cfg, data_dir=data_dir, tracking_uri=uri, register=False, progress=False)
    predictor = load_predictor(res.model_uri, tracking_uri=uri)
    assert isinstance(predictor, ArrhythmiaPredictor)
    db = shared_physionet / "mitdb" / "1.0.0"
    out = score_as_served(predictor, db, ("223",))
    ann = read_annotations(db / "223").select(WFDB_BEAT_SYMBOLS)
    labelled = int(np.isin(ann.symbol, sorted(MITDB_SYMBOL_TO_AAMI)).sum())
    # Every labelled beat is either scored (its detected peak matched) or counted as missed.
    assert out["n_beats"] + out["missed_beats"] == labelled
    assert 0 < out["missed_beats"] < 0.02 * labelled
    assert 0.0 <= out["macro_f1"] <= 1.0


def test_peak_offsets_per_class(mitdb_dir: Path) -> None:
    offsets = peak_offsets(mitdb_dir, ("223",))  # N, S, V and F beats
    assert set(offsets) == {"N", "S", "V", "F"}
    # XQRS lands normal beats on the annotated sample or next to it (1 sample = 2.8 ms at 360 Hz).
    assert offsets["N"]["p50_ms"] <= 2.8 and offsets["N"]["share_over_16ms"] < 0.05
    assert sum(o["n"] for o in offsets.values()) > 2000
