"""Beat-sequence research: choose a beat model on unseen patients, then test it once on DS2.

Stages (each a subcommand; results under ``bench/results/`` which git ignores):

``build``
    Beat sequences of mitdb DS1 (201 excluded) and every svdb record on disk, three ways: strips
    of mixed length (training), 10-s strips and 300-s strips (validation as served).
``select``
    Five folds grouped by record (each record is one patient; stratified so every fold holds S
    and V patients), every candidate trained on four folds and scored on the fifth, at 10-s and
    300-s strips. Each (candidate, fold) is an MLflow run in ``bench/results/mlflow.db``
    (experiment ``beat-research``) with per-class Se / PPV / F1; out-of-fold logits are saved.
``summary``
    Mean +- standard deviation over folds per candidate; the winner is the best mean macro-F1
    (N, S, V; averaged over the 10-s and 300-s strips).
``final``
    For the winner only: temperature and decision rule (additive log-offsets for S and V) fitted
    on its out-of-fold validation logits; then the recipe trained on all of DS1 + svdb and on DS1
    alone, and DS2 read once, at annotated and at detected R peaks (``detect_rpeaks`` on each raw
    strip, matched to the reference within 150 ms), per-class Se / PPV with 95% bootstrap
    intervals over DS2 records. The weights, config and temperature go to
    ``bench/results/beat_model/<train set>/``, the figures to ``bench/results/beat_final_*.json``.

Usage::

    python -m bench.beat_research build
    python -m bench.beat_research select [--candidates gru_rel_sqrt,...]
    python -m bench.beat_research summary
    python -m bench.beat_research final
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import default_raw_root
from models.beat_classifier import BeatClassifier
from models.beat_context import RELATIVE_FEATURE_NAMES
from models.beat_sequence import BeatSequenceConfig, BeatSequenceModel
from models.labels import AAMI_CLASSES
from pipeline.beat_sequences import (
    N_FOLDS,
    BeatSequences,
    build_sequences,
    concat_sequences,
    ds1_records,
    make_folds,
    svdb_records,
)
from pipeline.beat_train import (
    BeatTrainConfig,
    choose_decision_rule,
    expected_calibration_error,
    fit_temperature,
    per_class_scores,
    predict_logits,
    train_beat_model,
)

logger = logging.getLogger("bench.beat_research")

RESULTS = Path(__file__).resolve().parent / "results"
DATA_DIR = RESULTS / "beatseq"
SEGMENTATIONS = ("mixed", "10", "300")
EVAL_SEGMENTATIONS = ("10", "300")
CLASSES = ("N", "S", "V")

_REL = RELATIVE_FEATURE_NAMES
_ABS = ("pre_rr_s", "post_rr_s")

#: Every candidate: (model config, training config).
CANDIDATES: dict[str, tuple[BeatSequenceConfig, BeatTrainConfig]] = {
    "gru_rel_sqrt": (BeatSequenceConfig(cell="gru", feature_names=_REL), BeatTrainConfig()),
    "lstm_rel_sqrt": (BeatSequenceConfig(cell="lstm", feature_names=_REL), BeatTrainConfig()),
    "gru_rel_none": (
        BeatSequenceConfig(cell="gru", feature_names=_REL),
        BeatTrainConfig(class_weighting="none"),
    ),
    "gru_abs_sqrt": (
        BeatSequenceConfig(cell="gru", wave_mode="zscore", feature_names=_ABS),
        BeatTrainConfig(),
    ),
    "gru_rawwave_sqrt": (
        BeatSequenceConfig(cell="gru", wave_mode="zscore", feature_names=()),
        BeatTrainConfig(),
    ),
}


def _data(seg: str) -> BeatSequences:
    return BeatSequences.load(DATA_DIR / f"train_{seg}.npz")


def cmd_build(raw_root: Path) -> None:
    """Build the three segmentations of DS1 + svdb."""
    for seg in SEGMENTATIONS:
        t0 = time.perf_counter()
        a = build_sequences(raw_root / "mitdb" / "1.0.0", "mitdb", ds1_records(), seg)
        svdb = raw_root / "svdb" / "1.0.0"
        b = build_sequences(svdb, "svdb", svdb_records(svdb), seg)
        d = concat_sequences([a, b])
        d.save(DATA_DIR / f"train_{seg}.npz")
        logger.info(
            "%s strips: %d beats, %d records, %d strips, labels %s (%.1f s)",
            seg,
            len(d),
            len(np.unique(d.record)),
            len(np.unique(d.strip)),
            np.bincount(d.label[d.label >= 0]).tolist(),
            time.perf_counter() - t0,
        )


def _scores_prefixed(labels: np.ndarray, pred: np.ndarray, prefix: str) -> dict[str, float]:
    s = per_class_scores(labels, pred, CLASSES)
    return {f"{prefix}_{k}": v for k, v in s.items() if not np.isnan(v)}


def cmd_select(names: list[str], folds_to_run: list[int]) -> None:
    """Train every candidate on every fold; log to MLflow; save out-of-fold logits."""
    import mlflow

    torch.set_num_threads(1)
    train_all = _data("mixed")
    evals = {seg: _data(seg) for seg in EVAL_SEGMENTATIONS}
    folds = make_folds(train_all)
    (RESULTS / "beat_folds.json").write_text(json.dumps(folds, indent=1))
    fold_of = np.array([folds[str(r)] for r in train_all.record])
    mlflow.set_tracking_uri(f"sqlite:///{RESULTS / 'mlflow.db'}")
    mlflow.set_experiment("beat-research")
    for name in names:
        model_cfg, train_cfg = CANDIDATES[name]
        for k in folds_to_run:
            out = RESULTS / "beat_oof" / f"{name}_fold{k}.npz"
            if out.exists():
                logger.info("%s fold %d: done before, skipped", name, k)
                continue
            train = train_all.subset(fold_of != k)
            val_recs = sorted(r for r, f in folds.items() if f == k)
            with mlflow.start_run(run_name=f"{name}-fold{k}"):
                mlflow.log_params({"candidate": name, "fold": k, "n_val_records": len(val_recs)})
                mlflow.log_params({f"model.{a}": b for a, b in model_cfg.to_dict().items()})
                mlflow.log_params({f"train.{a}": b for a, b in train_cfg.to_dict().items()})
                mlflow.set_tag("val_records", ",".join(val_recs))
                t0 = time.perf_counter()

                def on_epoch(epoch: int, model: BeatSequenceModel, loss: float) -> None:
                    mlflow.log_metric("train_loss", loss, step=epoch)

                model = train_beat_model(model_cfg, train_cfg, train, on_epoch=on_epoch)
                train_s = time.perf_counter() - t0
                mlflow.log_metric("train_seconds", train_s)
                saved: dict[str, Any] = {}
                for seg, ev in evals.items():
                    val = ev.subset(np.isin(ev.record, val_recs))
                    z = predict_logits(model, val)
                    mlflow.log_metrics(_scores_prefixed(val.label, z.argmax(1), f"val{seg}"))
                    saved[f"logits_{seg}"] = z
                    saved[f"label_{seg}"] = val.label
                    saved[f"record_{seg}"] = val.record
                out.parent.mkdir(parents=True, exist_ok=True)
                np.savez(out, train_seconds=train_s, **saved)
                logger.info(
                    "%s fold %d: %.0f s, val10 %s",
                    name,
                    k,
                    train_s,
                    {
                        a: round(b, 3)
                        for a, b in per_class_scores(
                            saved["label_10"], saved["logits_10"].argmax(1), CLASSES
                        ).items()
                        if not a.endswith("_n")
                    },
                )


def _fold_table(name: str) -> dict[str, Any] | None:
    rows = []
    for k in range(N_FOLDS):
        p = RESULTS / "beat_oof" / f"{name}_fold{k}.npz"
        if not p.exists():
            return None
        with np.load(p) as z:
            row = {"train_seconds": float(z["train_seconds"])}
            for seg in EVAL_SEGMENTATIONS:
                s = per_class_scores(z[f"label_{seg}"], z[f"logits_{seg}"].argmax(1), CLASSES)
                row.update({f"{seg}_{a}": b for a, b in s.items() if not a.endswith("_n")})
            rows.append(row)
    keys = rows[0].keys()
    summary: dict[str, Any] = {}
    for key in keys:
        v = np.array([r[key] for r in rows], dtype=np.float64)
        summary[key] = (float(np.nanmean(v)), float(np.nanstd(v)))
    per_fold = [(r["10_macro_f1"] + r["300_macro_f1"]) / 2 for r in rows]
    summary["select"] = (float(np.mean(per_fold)), float(np.std(per_fold)))
    summary["select_per_fold"] = per_fold
    return summary


def cmd_summary() -> str | None:
    """Print mean +- sd over folds for each finished candidate; return the winner's name."""
    table = {}
    for name in CANDIDATES:
        s = _fold_table(name)
        if s is not None:
            table[name] = s
    show = ["select", "10_macro_f1", "300_macro_f1"] + [
        f"{seg}_{c}_{m}" for seg in EVAL_SEGMENTATIONS for c in CLASSES for m in ("se", "ppv")
    ]
    for name, s in sorted(table.items(), key=lambda kv: -float(kv[1]["select"][0])):
        logger.info(
            "%-18s %s | %.0f s/training",
            name,
            "  ".join(f"{k} {s[k][0]:.3f}+-{s[k][1]:.3f}" for k in show),
            s["train_seconds"][0],
        )
    if not table:
        return None
    best = max(table, key=lambda n: table[n]["select"][0])
    for name, s in table.items():
        diff = np.array(s["select_per_fold"]) - np.array(table[best]["select_per_fold"])
        s["paired_diff_vs_best"] = (float(diff.mean()), float(diff.std()), diff.tolist())
        logger.info(
            "%-18s minus %s, per fold: %s (mean %+.3f +- %.3f)",
            name,
            best,
            np.round(diff, 3).tolist(),
            diff.mean(),
            diff.std(),
        )
    (RESULTS / "beat_summary.json").write_text(json.dumps(table, indent=1))
    return best


# ----------------------------------------------------------------------------- final stage


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _oof(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Pooled out-of-fold validation logits and labels (10-s and 300-s strips) of a candidate."""
    zs, ys = [], []
    for k in range(N_FOLDS):
        with np.load(RESULTS / "beat_oof" / f"{name}_fold{k}.npz") as z:
            for seg in EVAL_SEGMENTATIONS:
                zs.append(z[f"logits_{seg}"])
                ys.append(z[f"label_{seg}"])
    return np.concatenate(zs), np.concatenate(ys)


_ROWS = ("N", "S", "V", "F")  # true AAMI classes scored; row 4: detections matching no beat


def ds2_counts(
    clf: BeatClassifier, raw_root: Path, records: list[str], strip_s: float, peaks: str
) -> dict[str, np.ndarray]:
    """DS2 as served, per record a ``(5, 4)`` count matrix.

    Each record's MLII lead is cut into consecutive raw strips of ``strip_s`` seconds (a tail under
    2 s is dropped); each strip goes through :meth:`BeatClassifier.predict_proba` with the
    annotated R peaks or with ``detect_rpeaks`` on the strip (as the service does when a request
    brings none), matched to the reference beats within 150 ms. Rows: true N, S, V, F, and
    detections matching no reference beat; columns: predicted N, S, V, and reference beats the
    detector missed. Q and unclassified beats are not scored.
    """
    from wfdb.processing import compare_annotations

    from models.preprocessing import detect_rpeaks
    from pipeline.beat_sequences import record_beats

    db_dir = raw_root / "mitdb" / "1.0.0"
    row_of = {AAMI_CLASSES.index(c): i for i, c in enumerate(_ROWS)}
    out = {}
    for rec in records:
        rb = record_beats(db_dir, "mitdb", rec)
        rows = np.array([row_of.get(int(a), -1) for a in rb.aami])
        c = np.zeros((5, 4), dtype=np.int64)
        step = int(strip_s * rb.fs)
        for s0 in range(0, rb.lead.shape[0], step):
            s1 = min(rb.lead.shape[0], s0 + step)
            ref = (rb.sample >= s0) & (rb.sample < s1)
            if s1 - s0 < int(2 * rb.fs):
                continue
            ref_s, ref_rows = rb.sample[ref] - s0, rows[ref]
            strip = rb.lead[s0:s1]
            pk = ref_s if peaks == "annotated" else detect_rpeaks(strip, rb.fs)
            pred = clf.decide(clf.predict_proba(strip, rb.fs, pk)) if pk.size else pk
            if peaks == "annotated":
                match = np.arange(ref_s.size)
            else:
                match = np.full(ref_s.size, -1)
                if pk.size and ref_s.size:
                    cmp = compare_annotations(ref_s, pk, round(0.15 * rb.fs))
                    match = np.asarray(cmp.matching_sample_nums, dtype=np.int64)
            hit = match >= 0
            for r in range(4):
                m = ref_rows == r
                c[r, :3] += np.bincount(pred[match[m & hit]], minlength=3)
                c[r, 3] += int((m & ~hit).sum())
            unmatched = np.setdiff1d(np.arange(pk.size), match[hit])
            # detections on Q / unclassified beats are neither right nor wrong: leave them out
            on_other = np.setdiff1d(match[hit & (ref_rows < 0)], [])
            unmatched = np.setdiff1d(unmatched, on_other)
            c[4, :3] += np.bincount(pred[unmatched], minlength=3)
        out[rec] = c
    return out


def scores_from_counts(c: np.ndarray) -> dict[str, float]:
    """Se / PPV from a summed ``(5, 4)`` matrix (see :func:`ds2_counts`).

    ``V`` is the model's class, V and F together (F merged into V); ``V_noF`` scores V beats only,
    F beats called V counting as false positives (the AAMI convention). Missed beats count against
    sensitivity, detections matching no beat against PPV.
    """
    tp = {"N": c[0, 0], "S": c[1, 1], "V": c[2, 2] + c[3, 2]}
    n_true = {"N": c[0].sum(), "S": c[1].sum(), "V": c[2].sum() + c[3].sum()}
    n_pred = {"N": c[:, 0].sum(), "S": c[:, 1].sum(), "V": c[:, 2].sum()}
    out = {}
    for k in ("N", "S", "V"):
        out[f"{k}_se"] = tp[k] / max(n_true[k], 1)
        out[f"{k}_ppv"] = tp[k] / max(n_pred[k], 1)
    out["V_noF_se"] = c[2, 2] / max(c[2].sum(), 1)
    out["V_noF_ppv"] = c[2, 2] / max(c[:, 2].sum(), 1)
    out["F_called_V"] = c[3, 2] / max(c[3].sum(), 1)
    out["missed_beats"] = c[:4, 3].sum()
    out["false_detections"] = c[4, :3].sum()
    return {k: float(v) for k, v in out.items()}


def bootstrap_scores(per_rec: dict[str, np.ndarray], n_boot: int = 2000) -> dict[str, list[float]]:
    """Point estimate and 95% bootstrap interval of every score, DS2 records resampled."""
    mats = np.stack([per_rec[r] for r in sorted(per_rec)])
    est = scores_from_counts(mats.sum(axis=0))
    rng = np.random.default_rng(0)
    boots = [
        scores_from_counts(mats[rng.integers(0, len(mats), len(mats))].sum(axis=0))
        for _ in range(n_boot)
    ]
    return {
        k: [
            v,
            float(np.percentile([b[k] for b in boots], 2.5)),
            float(np.percentile([b[k] for b in boots], 97.5)),
        ]
        for k, v in est.items()
    }


def cmd_calibrate(name: str) -> dict[str, Any]:
    """Temperature, per-class ECE and decision rule from the winner's out-of-fold logits."""
    z, y = _oof(name)
    temperature = fit_temperature(z, y)
    p_before, p_after = _softmax(z), _softmax(z / temperature)
    offsets = choose_decision_rule(p_after, y)
    rule_pred = (np.log(np.maximum(p_after, 1e-12)) + np.array([0.0, *offsets])).argmax(1)
    return {
        "winner": name,
        "temperature": temperature,
        "ece_before": dict(
            zip(CLASSES, expected_calibration_error(p_before, y).tolist(), strict=True)
        ),
        "ece_after": dict(
            zip(CLASSES, expected_calibration_error(p_after, y).tolist(), strict=True)
        ),
        "decision_offsets_S_V": offsets,
        "oof_argmax": per_class_scores(y, p_after.argmax(1), CLASSES),
        "oof_with_rule": per_class_scores(y, rule_pred, CLASSES),
    }


def cmd_final(raw_root: Path, winner: str | None, train_sets: list[str]) -> None:
    """Calibrate and choose the rule on validation, train the final models, then read DS2 once."""
    import mlflow

    from models.labels import DS2_RECORDS

    torch.set_num_threads(1)
    name = winner or cmd_summary()
    if name is None:
        raise SystemExit("no finished candidate: run `select` first")
    model_cfg, train_cfg = CANDIDATES[name]
    report = cmd_calibrate(name)
    logger.info("chosen on validation only: %s", json.dumps(report, indent=1))
    offsets = report["decision_offsets_S_V"]
    final_cfg = replace(model_cfg, temperature=report["temperature"])
    mlflow.set_tracking_uri(f"sqlite:///{RESULTS / 'mlflow.db'}")
    mlflow.set_experiment("beat-final")
    train_all = _data("mixed")
    sets = {
        "ds1+svdb": train_all,
        "ds1": train_all.subset(np.char.startswith(train_all.record.astype(str), "mitdb/")),
    }
    for label in train_sets:
        data = sets[label]
        with mlflow.start_run(run_name=f"{name}-{label}"):
            mlflow.log_params({f"model.{a}": b for a, b in final_cfg.to_dict().items()})
            mlflow.log_params({f"train.{a}": b for a, b in train_cfg.to_dict().items()})
            mlflow.log_params({"train_data": label, "decision_offsets_S_V": str(offsets)})
            t0 = time.perf_counter()
            model = train_beat_model(final_cfg, train_cfg, data)
            train_s = time.perf_counter() - t0
            clf = BeatClassifier(model=model, decision_offsets={"S": offsets[0], "V": offsets[1]})
            out_dir = RESULTS / "beat_model" / label.replace("+", "_")
            clf.save(out_dir)
            mlflow.log_metric("train_seconds", train_s)
            res: dict[str, Any] = {"train_seconds": train_s, "saved": str(out_dir)}
            for strip_s in (10.0, 300.0):
                for peaks in ("annotated", "detected"):
                    key = f"{int(strip_s)}s_{peaks}"
                    t1 = time.perf_counter()
                    counts = ds2_counts(clf, raw_root, list(DS2_RECORDS), strip_s, peaks)
                    res[key] = bootstrap_scores(counts)
                    res[key + "_counts"] = np.stack(list(counts.values())).sum(0).tolist()
                    mlflow.log_metrics({f"ds2_{key}_{k}": v[0] for k, v in res[key].items()})
                    logger.info(
                        "%s DS2 %s (%.0f s): %s",
                        label,
                        key,
                        time.perf_counter() - t1,
                        {k: [round(x, 3) for x in v] for k, v in res[key].items()},
                    )
            report[label] = res
            out_json = RESULTS / f"beat_final_{label.replace('+', '_')}.json"
            out_json.write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("stage", choices=["build", "select", "summary", "final"])
    p.add_argument("--raw-root", type=Path, default=None)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--folds", default=",".join(str(k) for k in range(N_FOLDS)))
    p.add_argument("--winner", default=None, help="final: use this candidate, not the summary's")
    p.add_argument("--train-sets", default="ds1+svdb,ds1", help="final: which training sets")
    a = p.parse_args(argv)
    raw_root = a.raw_root or default_raw_root()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.stage == "build":
        cmd_build(raw_root)
    elif a.stage == "select":
        cmd_select(a.candidates.split(","), [int(k) for k in a.folds.split(",")])
    elif a.stage == "summary":
        cmd_summary()
    else:
        cmd_final(raw_root, a.winner, a.train_sets.split(","))


if __name__ == "__main__":
    main()
