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


def test_summarise_profile_counts_busy_stacks_only() -> None:
    from bench.serving import summarise_profile

    raw = "\n".join(
        [
            "thread (t);run (a.py);assess_strip (models/quality.py);_filt (models/quality.py) 6",
            "thread (t);run (a.py);predict_strips (models/beat_sequence.py) 3",
            "thread (t);_bootstrap (threading.py);_worker (concurrent/futures/thread.py) 50",
            "thread (t);loads (json/__init__.py) 1",
        ]
    )
    out = summarise_profile(raw)
    assert out["busy_samples"] == 10 and out["waiting_samples"] == 50
    assert out["self_top"][0] == ["_filt (models/quality.py)", 0.6]
    assert out["inclusive"]["assess_strip"] == 0.6
    assert out["inclusive"]["predict_strips"] == 0.3 and out["inclusive"]["loads"] == 0.1


def test_rounds_are_reported_as_medians_with_their_spread() -> None:
    from bench.serving import Result, _ratios, median_results

    def result(server: str, scenario: str, strips_per_s: float, cpu_ms: float) -> Result:
        return Result(server, scenario, 10, 4, 1, 1.0, strips_per_s, strips_per_s, 5.0, 6.0, 7.0,
                      0, cpu_ms)  # fmt: skip

    rounds = [  # ours, mlflow; scenario by scenario, round after round
        (200.0, 4.0, 100.0, 8.0),
        (300.0, 3.0, 100.0, 9.0),
        (100.0, 6.0, 100.0, 9.0),
    ]
    results = []
    for ours_speed, ours_cpu, base_speed, base_cpu in rounds:
        results += [result("ours", "single", ours_speed, ours_cpu)]
        results += [result("mlflow", "single", base_speed, base_cpu)]
    medians = median_results(results)
    assert [(r.server, r.strips_per_s, r.server_cpu_ms_per_strip) for r in medians] == [
        ("ours", 200.0, 4.0),
        ("mlflow", 100.0, 9.0),
    ]
    ratios = _ratios(results)
    assert ratios["ratios"] == {"single": 2.0} and ratios["ratio_ranges"] == {"single": [1.0, 3.0]}
    assert ratios["cpu_ratios"] == {"single": 2.25}
    assert ratios["cpu_ratio_ranges"] == {"single": [1.5, 3.0]}


def test_tiny_beat_sequence_model_serves_through_its_pyfunc(mitdb_dir: Path) -> None:
    import json

    import torch

    from bench.tiny_models import mitdb_strip, train_beat_sequence
    from models.beat_predictor import BeatPyfuncModel

    torch.set_num_threads(1)
    clf = train_beat_sequence(mitdb_dir, steps=2, minutes=0.5)
    assert clf.model.config.cell == "lstm" and clf.model.config.wave_mode == "relative"
    signal, fs, peaks, _ = mitdb_strip(mitdb_dir, "119", start_s=300.0)
    # The body bench.serving sends to mlflow models serve, as its scoring server parses it.
    body = json.loads(
        json.dumps({"inputs": {"signal": signal.tolist(), "fs": fs, "r_peaks": peaks.tolist()}})
    )
    inputs = {k: np.asarray(v) for k, v in body["inputs"].items()}
    probs = BeatPyfuncModel(clf).predict(inputs)
    assert probs.shape == (len(peaks), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, clf.predict_proba(signal, fs, peaks))
