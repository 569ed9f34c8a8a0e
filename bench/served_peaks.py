"""Beat models as served: scored on detected R peaks, on DS1's patient-grouped folds only.

The reported MIT-BIH figures classify beats centred on the reference annotations. The service
detects R peaks itself when a request brings none, and XQRS places many ventricular beats tens of
ms from their annotation. This benchmark measures what that costs and whether training on
detected peaks (``ecg prepare mitdb --r-peaks detected``) wins it back:

1. builds the mitdb dataset twice into a temporary directory (annotated and detected R peaks);
2. for each cell (GRU, LSTM), each source and each fold of :data:`bench.train_full.DS1_FOLDS`,
   trains the recommended configuration with that fold held out (the test split is not read);
3. scores every model the way the service works on whole validation records: detect the R peaks
   (``detect_rpeaks``, as the service does for a segment sent without them), ``beat_inputs`` with
   the model card's preprocessing, forward pass, then match the peaks to the reference beats
   within 150 ms (missed beats are left out and counted).

Also reports how far the detector puts matched peaks from the annotations, per AAMI class, and,
on the same folds, the RR-only baseline of the design notes: a class-balanced
logistic regression on ``pre_rr_local`` and ``post_rr_local`` (annotated beats).

Usage::

    python -m bench.served_peaks [--raw-root ../shared/physionet] [--models gru,lstm]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support
from wfdb.processing import compare_annotations

from bench import default_raw_root
from bench.train_full import DS1_FOLDS
from models.labels import AAMI_CLASSES, MITDB_SYMBOL_TO_AAMI, WFDB_BEAT_SYMBOLS
from models.predictor import ArrhythmiaPredictor, load_predictor
from models.preprocessing import detect_rpeaks
from pipeline.dataset_store import load_dataset
from pipeline.datasets import R_PEAK_SOURCES, prepare_dataset
from pipeline.records import MITDB_LEAD, read_annotations, read_record
from pipeline.settings import get_settings
from pipeline.train import train
from pipeline.train_config import TrainConfig

logger = logging.getLogger("bench.served_peaks")

_NSVF = [AAMI_CLASSES.index(c) for c in "NSVF"]


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Macro-F1 over N, S, V, F (the training's selection metric) and per-class Se / PPV."""
    ppv, se, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=_NSVF, zero_division=0)
    out = {"macro_f1": float(f1.mean())}
    for i, c in enumerate("NSVF"):
        out[f"{c}_se"], out[f"{c}_ppv"] = float(se[i]), float(ppv[i])
    return out


@dataclass(frozen=True)
class _DetectedRecord:
    """One record's MLII lead with its detected R peaks matched to the reference beats."""

    lead: np.ndarray  # (n_samples,) mV at fs
    fs: float
    peaks: np.ndarray  # (n_peaks,) detected, at fs
    ref_sample: np.ndarray  # (n_beats,) reference beats
    ref_class: list[str | None]  # their AAMI class (None: no class)
    match: np.ndarray  # (n_beats,) index into peaks, -1 when missed


def _detected_record(db: Path, record: str) -> _DetectedRecord:
    rec = read_record(db / record, leads=[MITDB_LEAD])
    ann = read_annotations(db / record).select(WFDB_BEAT_SYMBOLS)
    lead = rec.lead(MITDB_LEAD)
    peaks = detect_rpeaks(lead, rec.fs)  # what the service does with a segment sent bare
    match = compare_annotations(ann.sample, peaks, round(0.15 * rec.fs)).matching_sample_nums
    classes = [MITDB_SYMBOL_TO_AAMI.get(str(s)) for s in ann.symbol]
    return _DetectedRecord(lead, rec.fs, peaks, ann.sample, classes, match)


def score_as_served(
    predictor: ArrhythmiaPredictor, db: Path, records: tuple[str, ...]
) -> dict[str, float]:
    """Classify whole records from detected peaks; score the peaks that match labelled beats."""
    y_true: list[int] = []
    y_pred: list[int] = []
    missed = 0
    for record in records:
        d = _detected_record(db, record)
        pred = predictor.predict(d.lead, d.fs, d.peaks, assess_quality=False)
        for cls, m in zip(d.ref_class, d.match, strict=True):
            if cls is None:
                continue
            if m < 0:
                missed += 1
                continue
            y_true.append(AAMI_CLASSES.index(cls))
            y_pred.append(int(pred.probabilities[m].argmax()))
    scores = _scores(np.array(y_true), np.array(y_pred))
    return {**scores, "n_beats": len(y_true), "missed_beats": missed}


def peak_offsets(db: Path, records: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per AAMI class: how far :func:`detect_rpeaks` puts matched peaks from the annotations."""
    offsets: dict[str, list[float]] = {c: [] for c in "NSVF"}
    for record in records:
        d = _detected_record(db, record)
        for cls, m, ref in zip(d.ref_class, d.match, d.ref_sample, strict=True):
            if cls in offsets and m >= 0:
                offsets[cls].append(abs(int(d.peaks[m]) - int(ref)) * 1000 / d.fs)
    return {
        c: {
            "n": len(v),
            "p50_ms": float(np.percentile(v, 50)),
            "p90_ms": float(np.percentile(v, 90)),
            "share_over_16ms": float(np.mean(np.asarray(v) > 16)),
        }
        for c, v in offsets.items()
        if v
    }


def rr_baseline(dataset_dir: Path) -> list[dict[str, float]]:
    """Class-balanced logistic regression on two locally normalised RR features, per fold."""
    ds = load_dataset(dataset_dir)
    a = ds.arrays
    names = list(ds.preprocess.rr_features)
    x = a["rr"][:, [names.index("pre_rr_local"), names.index("post_rr_local")]]
    ds1 = a["split"] != "test"
    out = []
    for fold in DS1_FOLDS:
        val = ds1 & np.isin(a["record"], fold)
        fit = ds1 & ~val
        lr = LogisticRegression(class_weight="balanced", max_iter=2000).fit(
            x[fit], a["labels"][fit]
        )
        out.append(_scores(a["labels"][val], lr.predict(x[val])))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--raw-root", type=Path, default=None, help="default: mirror or data/raw")
    ap.add_argument("--models", default="gru,lstm")
    ap.add_argument("--out", type=Path, default=Path("bench/results/served_peaks.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    raw_root = args.raw_root or default_raw_root()
    db = raw_root / "mitdb" / "1.0.0"
    results: dict[str, Any] = {"folds": [list(f) for f in DS1_FOLDS]}
    results["peak_offsets"] = peak_offsets(db, tuple(r for f in DS1_FOLDS for r in f))
    logger.info("detected vs annotated R peaks, DS1: %s", json.dumps(results["peak_offsets"]))
    with tempfile.TemporaryDirectory(prefix="bench-served-peaks-") as tmp:
        os.environ["ECG_MLFLOW_ARTIFACT_DIR"] = str(Path(tmp) / "mlartifacts")  # not ./mlartifacts
        get_settings.cache_clear()
        data = {s: Path(tmp) / s for s in R_PEAK_SOURCES}
        for source, root in data.items():
            prepare_dataset("mitdb", raw_root, root / "processed", r_peaks=source)
        results["rr_baseline"] = rr_baseline(data["annotated"] / "processed" / "mitdb")
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for model in args.models.split(","):
            for source, root in data.items():
                rows: list[dict[str, Any]] = []
                for fold in DS1_FOLDS:
                    cfg = TrainConfig.recommended(
                        "mitdb", cell=model, num_threads=1, val_records=fold, evaluate_test=False
                    )
                    res = train(
                        cfg, data_dir=root, experiment=f"served-peaks-{source}",
                        tracking_uri=uri, register=False, progress=False,
                    )  # fmt: skip
                    predictor = load_predictor(res.model_uri, tracking_uri=uri)
                    assert isinstance(predictor, ArrhythmiaPredictor)
                    served = score_as_served(predictor, db, fold)
                    rows.append({"val_macro_f1_own_beats": res.best_val, "served": served})
                    logger.info("%s %s %s: %s", model, source, fold, json.dumps(served))
                mean_served = float(np.mean([r["served"]["macro_f1"] for r in rows]))
                mean_own = float(np.mean([r["val_macro_f1_own_beats"] for r in rows]))
                results[f"{model}-trained-on-{source}"] = {
                    "mean_val_macro_f1_own_beats": mean_own,
                    "mean_val_macro_f1_served": mean_served,
                    "folds": rows,
                }
                logger.info(
                    "%s trained on %s peaks: mean val macro-F1 %.4f on its own beats, %.4f served",
                    model, source, mean_own, mean_served,
                )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
