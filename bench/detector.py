"""Validate the R-peak detector against the MIT-BIH reference beat annotations.

Runs :func:`models.preprocessing.detect_rpeaks` on every record and matches detections to the
reference beats (every WFDB beat symbol, 150 ms tolerance,
:func:`wfdb.processing.compare_annotations`), giving sensitivity Se = TP / (TP + FN) and positive
predictivity +P = TP / (TP + FP) pooled over records (ANSI/AAMI EC57 gross statistics), and the
timing error of matched peaks.

Variants (``--variants``):

``mlii360``       ``detect_rpeaks`` (:func:`models.rpeaks.detect_qrs`) on raw MLII at the
                  database rate, 360 Hz
``mlii125``       ``detect_rpeaks`` on raw MLII resampled to 125 Hz (``resample``), as the service
                  calls it after resampling to ``fs_target``
``lead0_360``     ``detect_rpeaks`` on raw lead 0 at 360 Hz (MLII except in 102, 104 and 114)
``xqrs250``       the former ``detect_rpeaks``: XQRS run at 250 Hz
                  (:func:`models.rpeaks.detect_xqrs`) on raw MLII at 360 Hz
``xqrs360``       plain XQRS on raw MLII at 360 Hz (on lead 0 DESIGN.md's 99.20 / 99.30 anchor)
``xqrs125``       plain XQRS on raw MLII at 125 Hz

Detections at 125 Hz are mapped back to 360 Hz sample numbers before matching. Figures are
pooled over DS1 (where the detector was designed, with svdb), DS2 (never used for a choice), the
four paced records and all 48. A second set leaves out the annotated ventricular flutter /
fibrillation episodes (reference ``[`` to ``]``, 207 only), whose flutter waves are not beats in
the reference and which beat-by-beat QRS statistics do not score (column "no VF").

Usage::

    python -m bench.detector [--raw-root ../shared/physionet] [--records 100,101] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench import default_raw_root
from models.labels import DS1_RECORDS, DS2_RECORDS, PACED_RECORDS, WFDB_BEAT_SYMBOLS
from models.preprocessing import PreprocessConfig, detect_rpeaks, resample
from models.rpeaks import detect_xqrs
from pipeline.records import MITDB_LEAD, read_annotations, read_record

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("mlii360", "mlii125", "lead0_360", "xqrs250", "xqrs360", "xqrs125")
#: Record groups reported separately (DS1 is where the detector was designed).
GROUPS: dict[str, frozenset[str]] = {
    "DS1": frozenset(DS1_RECORDS),
    "DS2": frozenset(DS2_RECORDS),
    "paced": PACED_RECORDS,
}
TOLERANCE_S = 0.150


def match_beats(
    reference: np.ndarray, detected: np.ndarray, fs: float, tolerance_s: float = TOLERANCE_S
) -> dict[str, Any]:
    """Match detected to reference beats one-to-one within ``tolerance_s``.

    Parameters
    ----------
    reference, detected : np.ndarray
        int64 ``(n,)`` sample indices at ``fs``.

    Returns
    -------
    dict
        ``tp``, ``fn``, ``fp`` counts and ``offsets_ms`` (detected - reference of matched pairs).
    """
    from wfdb import processing

    ref = np.asarray(reference, dtype=np.int64)
    det = np.asarray(detected, dtype=np.int64)
    if det.size == 0 or ref.size == 0:
        return {"tp": 0, "fn": int(ref.size), "fp": int(det.size), "offsets_ms": np.zeros(0)}
    cmp = processing.compare_annotations(ref, det, round(tolerance_s * fs))
    matched_ref = ref[cmp.matched_ref_inds]
    matched_det = det[cmp.matched_test_inds]
    return {
        "tp": int(cmp.tp),
        "fn": int(cmp.fn),
        "fp": int(cmp.fp),
        "offsets_ms": (matched_det - matched_ref) * 1000.0 / fs,
    }


def plain_xqrs(signal: np.ndarray, fs: float) -> np.ndarray:
    """wfdb's XQRS as is, at ``fs`` (``detect_rpeaks`` before it resampled to 250 Hz)."""
    from wfdb import processing

    xqrs = processing.XQRS(sig=np.asarray(signal, dtype=np.float64), fs=fs)
    xqrs.detect(verbose=False)
    return np.unique(np.asarray(xqrs.qrs_inds, dtype=np.int64))


def detect(signal: np.ndarray, fs: float, variant: str) -> tuple[np.ndarray, float]:
    """Run one variant on a raw record lead; detections at ``fs`` and detector seconds."""
    target = PreprocessConfig().fs_target
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    rate = target if variant.endswith("125") else fs
    x = resample(signal, fs, rate)
    fn: Callable[[np.ndarray, float], np.ndarray]
    if variant == "xqrs250":
        fn = detect_xqrs
    elif variant.startswith("xqrs"):
        fn = plain_xqrs
    else:
        fn = detect_rpeaks
    t0 = time.perf_counter()
    peaks = fn(x, rate)
    seconds = time.perf_counter() - t0
    back = np.round(peaks * (fs / rate)).astype(np.int64)
    return np.clip(back, 0, signal.shape[0] - 1), seconds


def vf_mask(samples: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """True for samples inside a reference VF/VFL episode (``[`` at ``starts``, ``]`` at ``ends``).

    An episode left open at the end of the record runs to its end.
    """
    inside = np.zeros(samples.shape, dtype=bool)
    for start in np.sort(starts):
        later = ends[ends >= start]
        end = later.min() if later.size else np.iinfo(np.int64).max
        inside |= (samples >= start) & (samples <= end)
    return inside


def evaluate_record(args: tuple[str, str]) -> dict[str, Any]:
    """Worker: all variants on one record (also with VF/VFL episodes left out, key ``novf``)."""
    stem, variants_csv = args
    rec = read_record(stem)
    ann = read_annotations(stem)
    beats = ann.select(WFDB_BEAT_SYMBOLS).sample
    starts = ann.select(frozenset("[")).sample
    ends = ann.select(frozenset("]")).sample
    out: dict[str, Any] = {"record": rec.name, "n_ref": int(beats.size)}
    for variant in variants_csv.split(","):
        if variant == "lead0_360":
            lead = rec.signal[:, 0]
        elif MITDB_LEAD in rec.leads:
            lead = rec.lead(MITDB_LEAD)
        else:  # 102 and 104 have no MLII
            out[variant] = None
            continue
        peaks, seconds = detect(lead, rec.fs, variant)
        out[variant] = {**match_beats(beats, peaks, rec.fs), "seconds": seconds}
        keep_ref = ~vf_mask(beats, starts, ends)
        keep_det = ~vf_mask(peaks, starts, ends)
        out[variant]["novf"] = {
            k: v
            for k, v in match_beats(beats[keep_ref], peaks[keep_det], rec.fs).items()
            if k != "offsets_ms"
        }
    return out


def strip_timing(stem: str, repeats: int = 30) -> dict[str, float]:
    """Median milliseconds per 10-s MLII strip: ``detect_rpeaks`` and plain XQRS, 360 / 125 Hz."""
    lead = read_record(stem).lead(MITDB_LEAD)
    out = {}
    for label, fn in (
        ("detect_rpeaks", detect_rpeaks),
        ("xqrs250", detect_xqrs),
        ("xqrs", plain_xqrs),
    ):
        for rate in (360.0, 125.0):
            strips = [
                resample(lead[i * 3600 : (i + 1) * 3600], 360.0, rate) for i in range(repeats)
            ]
            times = []
            for strip in strips:
                t0 = time.perf_counter()
                fn(strip, rate)
                times.append(time.perf_counter() - t0)
            out[f"{label}@{rate:.0f}Hz"] = round(1000.0 * float(np.median(times)), 2)
    return out


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tp = sum(r["tp"] for r in rows)
    fn = sum(r["fn"] for r in rows)
    fp = sum(r["fp"] for r in rows)
    return {
        "records": len(rows),
        "reference_beats": tp + fn,
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "sensitivity": tp / max(tp + fn, 1),
        "positive_predictivity": tp / max(tp + fp, 1),
    }


def summarise(results: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Pooled Se / +P per variant (records without the lead are left out of that variant).

    Top-level figures pool every record given; ``groups`` pools DS1, DS2 and the paced records
    separately, each also without the VF/VFL episodes (``novf``).
    """
    summary: dict[str, Any] = {}
    for v in variants:
        named = [(r["record"], r[v]) for r in results if r.get(v) is not None]
        rows = [row for _, row in named]
        off = np.concatenate([r["offsets_ms"] for r in rows]) if rows else np.zeros(0)
        groups: dict[str, Any] = {}
        for group, members in {"all": None, **GROUPS}.items():
            picked = [row for name, row in named if members is None or name in members]
            if picked:
                groups[group] = {
                    **_pooled(picked),
                    "novf": _pooled([row["novf"] for row in picked]),
                }
        summary[v] = {
            **_pooled(rows),
            "offset_ms_median": float(np.median(off)) if off.size else float("nan"),
            "offset_ms_abs_p95": float(np.percentile(np.abs(off), 95))
            if off.size
            else float("nan"),
            "detector_seconds": sum(r["seconds"] for r in rows),
            "groups": groups,
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-root", type=Path, default=None, help="default: mirror or data/raw")
    parser.add_argument("--records", help="comma-separated (default: all in RECORDS)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write per-record and pooled results here")
    args = parser.parse_args(argv)
    args.raw_root = args.raw_root or default_raw_root()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    db = args.raw_root / "mitdb" / "1.0.0"
    if not (db / "RECORDS").is_file():
        parser.error(f"no MIT-BIH database at {db}; pass --raw-root or run `ecg download mitdb`")
    names = args.records.split(",") if args.records else (db / "RECORDS").read_text().split()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    jobs = [(str(db / n), ",".join(variants)) for n in names]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        results = list(pool.map(evaluate_record, jobs))
    wall = time.perf_counter() - t0
    summary = summarise(results, variants)
    timing = strip_timing(str(db / ("100" if "100" in names else names[0])))

    print(f"{len(names)} records, tolerance {TOLERANCE_S * 1000:.0f} ms, wall {wall:.0f} s")
    print(f"{'variant':<10} {'recs':>4} {'ref beats':>9} {'FN':>5} {'FP':>5} {'Se %':>7} "
          f"{'+P %':>7} {'off med ms':>10} {'|off| p95':>9} {'det s':>6}")  # fmt: skip
    for v, s in summary.items():
        print(
            f"{v:<10} {s['records']:>4} {s['reference_beats']:>9} {s['fn']:>5} {s['fp']:>5} "
            f"{100 * s['sensitivity']:>7.2f} {100 * s['positive_predictivity']:>7.2f} "
            f"{s['offset_ms_median']:>10.1f} {s['offset_ms_abs_p95']:>9.1f} "
            f"{s['detector_seconds']:>6.1f}"
        )
    print(f"{'variant':<10} {'group':<6} {'recs':>4} {'ref beats':>9} {'FN':>5} {'FP':>5} "
          f"{'Se %':>7} {'+P %':>7} {'no VF: Se %':>11} {'+P %':>7}")  # fmt: skip
    for v, s in summary.items():
        for group, g in s["groups"].items():
            nv = g["novf"]
            print(
                f"{v:<10} {group:<6} {g['records']:>4} {g['reference_beats']:>9} {g['fn']:>5} "
                f"{g['fp']:>5} {100 * g['sensitivity']:>7.2f} "
                f"{100 * g['positive_predictivity']:>7.2f} {100 * nv['sensitivity']:>11.2f} "
                f"{100 * nv['positive_predictivity']:>7.2f}"
            )
    print("per-record Se/+P below 99% (variant: record Se +P):")
    for v in variants:
        for r in results:
            row = r.get(v)
            if row is None:
                continue
            se = row["tp"] / max(row["tp"] + row["fn"], 1)
            pp = row["tp"] / max(row["tp"] + row["fp"], 1)
            if min(se, pp) < 0.99:
                print(f"  {v}: {r['record']} {100 * se:.2f} {100 * pp:.2f}")
    print(f"ms per 10-s MLII strip of record 100 (median of 30): {timing}")
    if args.json:
        for r in results:
            for v in variants:
                if r.get(v) is not None:
                    r[v] = {k: x for k, x in r[v].items() if k != "offsets_ms"}
        payload = {"summary": summary, "strip_ms": timing, "records": results}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
