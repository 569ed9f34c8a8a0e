"""Signal quality on clean MIT-BIH records and the EC57 noise stress test.

Two measurements of :func:`models.quality.assess_strip`, both on 10-s strips of MLII (lead 0 in
102 and 104, which lack MLII) cut back to back from each record, as the service would receive
them, with the R peaks found by the service's detector (``detect_rpeaks``) unless ``--annotated``:

``clean``   the share of reference beats (every AAMI N/S/V/F/Q beat) judged unreadable on the
            clean records (the aim: under 1%). A reference beat is lost when the detection that
            matches it (within 150 ms) is unreadable; reference beats the detector misses are the
            detector's misses, counted apart (``missed``).
``stress``  ``nst``-style noise stress records (:mod:`pipeline.noise_stress`: nstdb ``em``,
            ``ma``, ``bw`` at 24, 18, 12, 6, 0 and -6 dB SNR on the QRS amplitude, five clean
            minutes then two noisy and two clean minutes alternately), scored on the strips that
            lie wholly in noisy periods (noise ``clean``: the same strips without noise). Per
            SNR: ``readable`` = share of reference beats matched by a detection the service
            classifies (readable, in a strip not unreadable as a whole); the detector's Se / PPV
            on those beats (EC57 gross statistics with the unreadable beats excluded: TP =
            reference beats matched by a classified detection, FP = classified detections
            matching no reference beat, FN = reference beats that no detection matches, in strips
            that are not unreadable as a whole); and Se / PPV of all detections without the
            quality gate, for comparison. With ``--classify MODEL`` every strip goes through the
            service's predictor instead (its quality check, detector and model) and the per-class
            N / S / V (F counted as V) Se / PPV of the classified beats are reported too:
            bench/NOISE_STRESS.md holds those tables and what they mean.

Thresholds were chosen on DS1 records only (the clean loss of DS1 and the stress figures of the
DS1 records below); DS2 was not used for a choice. Measured here (2-core CPU, 30 Nov 2026) with the
former XQRS detector; the figures with the Pan-Tompkins detector (1 Dec 2026: clean loss 0.13%; the
stress tables) are in bench/NOISE_STRESS.md and the README:

``clean --records all`` (48 records, 8,640 strips, detected peaks): 349 of 107,365 matched
reference beats unreadable = **0.33%** (DS1 0.47%, DS2 0.20%; 108: 201, 105: 40, 222: 30, 116: 29;
reasons bSQI, template correlation, basSQI, kSQI, local noise, clipping); 2.6% of beats "noisy";
44 strips (0.5%) unreadable; 1,785 reference beats missed by the detector (not counted as lost).
With the annotated R peaks (``--annotated``): 157 of 109,150 = 0.14%. 132 s for 21.6 h of ECG.

``stress`` (DS1 records 118, 119, 101, 106, 205, 220; 5,516 reference beats in noisy periods per
row; detected peaks; readable = share of reference beats the service would classify; Se / PPV of
the detector on readable beats; ``all``: without the quality gate; re-measured 1 Dec 2026 after
readable beats of unreadable strips stopped counting as readable, which moved only ``ma`` 6 dB
and below by 0.1-0.4 points)::

    noise SNR  readable%   Se%  PPV%  Se_all% PPV_all%
    bw     24     99.0    99.0  99.9   99.0    99.9
    bw     12     99.0    99.0  99.9   99.0    99.9
    bw      6     98.7    98.8  99.3   98.8    98.9
    bw      0     93.4    98.7  98.1   98.6    94.2
    bw     -6     62.0    98.1  93.7   96.8    83.7
    em     24     99.0    99.0  99.9   99.0    99.9
    em     18     98.9    99.0  99.1   99.0    99.0
    em     12     96.1    97.5  83.8   97.5    83.3
    em      6     91.5    93.2  62.5   93.2    62.1
    em      0     77.2    86.6  51.0   87.2    51.0
    em     -6     49.5    68.3  41.4   70.4    42.3
    ma     24     99.1    99.1  99.9   99.1    99.9
    ma     18     98.9    99.0  99.5   99.0    98.8
    ma     12     96.7    98.1  96.4   98.1    89.8
    ma      6     84.4    96.8  91.5   96.4    72.8
    ma      0     41.0    95.0  87.1   92.9    61.0
    ma     -6     14.1    91.8  87.7   77.1    51.0

Run once afterwards on six DS2 records (``--records 100,103,113,117,121,123``, 4,785 beats per
row; nothing was changed after it), readable% / Se% / PPV% (ungated PPV%): ``ma`` 12 dB 96.3 /
98.0 / 93.9 (85.1), 6 dB 74.3 / 96.9 / 87.6 (65.9), 0 dB 37.1 / 95.6 / 84.1 (55.0), -6 dB 13.5 /
91.5 / 83.6 (45.8); ``em`` 12 dB 94.3 / 96.8 / 74.6 (73.4), 6 dB 89.0 / 92.7 / 54.1 (53.6), 0 dB
77.2 / 87.5 / 45.0 (45.0); ``bw`` 0 dB 91.5 / 98.5 / 96.8 (92.3), -6 dB 55.2 / 98.1 / 91.1 (76.0);
at 24 dB every noise 99.0 / 99.0 / 99.8-99.9.

The gate works for muscle noise and baseline wander (at ``ma`` 0 dB PPV 61% -> 87% on the beats it
keeps) but not for electrode motion: ``em`` artifacts look like beats to both detectors and to the
template, so from 12 dB down the false detections pass (PPV 84% at 12 dB, 63% at 6 dB, the same
as ungated). Tried and dropped: making template outliers unreadable in noisy windows (+250 lost
clean DS1 beats, no PPV gain under ``em``); an RR-irregularity index (the share of RR intervals
under half the median) overlaps with clean DS1 strips holding ectopic beats.

Usage::

    python -m bench.noise_stress clean --records all          # the 48 records
    python -m bench.noise_stress stress --records 118,119,... [--snrs 24,18,12,6,0,-6]
    # per-class figures through the served model (about 7 min), tables into NOISE_STRESS.md:
    python -m bench.noise_stress stress --classify models:/ecg-arrhythmia@champion \
        --tracking-uri sqlite:///mlflow.db --records stress --records held-out --records ds2 \
        --markdown bench/NOISE_STRESS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bench import default_raw_root
from models.labels import DS1_RECORDS, DS2_RECORDS, WFDB_BEAT_SYMBOLS, aami_class
from models.quality import UNREADABLE, QualityThresholds, StripQuality, assess_strip
from pipeline.noise_stress import (
    NOISE_TYPES,
    STANDARD_SNRS_DB,
    add_noise,
    read_noise,
    standard_protocol,
)
from pipeline.records import MITDB_LEAD, Record, read_annotations, read_record

if TYPE_CHECKING:
    from models.predictor import BeatPredictions

logger = logging.getLogger(__name__)

STRIP_S = 10.0
TOLERANCE_S = 0.150
#: The noise stress test's clean records: nstdb's own (118, 119) and four more DS1 records.
STRESS_RECORDS: tuple[str, ...] = ("118", "119", "101", "106", "205", "220")
#: Six DS2 records (patients never used for training or a choice), run once for the report.
HELD_OUT_RECORDS: tuple[str, ...] = ("100", "103", "113", "117", "121", "123")
#: Pseudo noise type: the same strips (those of the noisy periods) with no noise added.
CLEAN = "clean"
_NORMAL = ("N", "L", "R", "e", "j")  # sigamp's "normal" beats (AAMI N)
#: The classes scored per class (AAMI; F is counted as V, Q beats are not scored).
SCORED_CLASSES: tuple[str, ...] = ("N", "S", "V")
_MERGED = {"F": "V"}
#: Confusion rows beside the scored classes: Q (reference beats of no scored class) and O (a
#: classified detection that matches no reference beat: a false beat shown to the user).
_Q, _O = "Q", "O"


class BeatLabeller(Protocol):
    """What the per-class figures need: the service's predictor (``ArrhythmiaPredictor.predict``).

    ``predict(signal (n,) mV, fs, r_peaks (k,) or None) -> BeatPredictions`` judges the strip's
    quality (detecting the beats when ``r_peaks`` is None) and labels its classified beats.
    """

    def predict(
        self, signal: np.ndarray, fs: float, r_peaks: np.ndarray | None = None
    ) -> BeatPredictions: ...


def _lead(rec: Record) -> np.ndarray:
    return rec.lead(MITDB_LEAD) if MITDB_LEAD in rec.leads else rec.signal[:, 0]


def _strips(n: int, fs: float) -> list[tuple[int, int]]:
    size = round(STRIP_S * fs)
    return [(s, s + size) for s in range(0, n - size + 1, size)]


def _match(ref: np.ndarray, det: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches within 150 ms: (reference index, detection index) pairs."""
    from wfdb import processing

    if ref.size == 0 or det.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cmp = processing.compare_annotations(ref, det, round(TOLERANCE_S * fs))
    return np.asarray(cmp.matched_ref_inds, dtype=np.int64), np.asarray(
        cmp.matched_test_inds, dtype=np.int64
    )


def _assess(
    x: np.ndarray, fs: float, ref: np.ndarray, annotated: bool, th: QualityThresholds
) -> StripQuality:
    return assess_strip(x, fs, ref if annotated else None, thresholds=th)


def _kept(q: StripQuality) -> np.ndarray:
    """bool ``(n_beats,)``: the beats the service classifies (readable, in a readable strip)."""
    return q.readable & (q.verdict != UNREADABLE)


def reference_class(symbol: str) -> str:
    """AAMI class of a reference beat as scored here: N, S, V (V and F) or Q (anything else)."""
    cls = aami_class(symbol)
    cls = _MERGED.get(cls, cls) if cls is not None else None
    return cls if cls in SCORED_CLASSES else _Q


def clean_record(
    stem: Path, *, annotated: bool = False, thresholds: QualityThresholds | None = None
) -> dict[str, Any]:
    """Beats lost to "unreadable" on one clean record (10-s strips).

    Returns
    -------
    dict
        ``record``, ``ref`` (reference beats), ``matched``, ``missed`` (no detection within
        150 ms), ``lost`` (matched, but unreadable), ``noisy`` (matched, verdict noisy),
        ``strips`` and ``strips_unreadable``, and the reasons of lost beats.
    """
    th = thresholds or QualityThresholds()
    rec = read_record(stem)
    x, fs = _lead(rec), rec.fs
    ann = read_annotations(stem).select(WFDB_BEAT_SYMBOLS)
    out: dict[str, Any] = {"record": rec.name, "ref": 0, "matched": 0, "missed": 0, "lost": 0}
    out.update(noisy=0, strips=0, strips_unreadable=0, reasons={})
    for start, stop in _strips(x.shape[0], fs):
        ref = ann.sample[(ann.sample >= start) & (ann.sample < stop)] - start
        q = _assess(x[start:stop], fs, ref, annotated, th)
        ri, di = _match(ref, q.r_peaks, fs)
        verdicts = np.asarray(q.beat_verdicts, dtype=object)
        out["ref"] += int(ref.size)
        out["matched"] += int(ri.size)
        out["missed"] += int(ref.size - ri.size)
        lost = di[verdicts[di] == UNREADABLE] if di.size else di
        out["lost"] += int(lost.size)
        out["noisy"] += int(np.sum(verdicts[di] == "noisy")) if di.size else 0
        out["strips"] += 1
        out["strips_unreadable"] += int(q.verdict == UNREADABLE)
        for d in lost:
            for reason in q.beat_reasons[int(d)]:
                out["reasons"][reason] = out["reasons"].get(reason, 0) + 1
    return out


def _empty_row(record: str, noise_type: str, snr: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"record": record, "noise": noise_type, "snr_db": snr}
    row.update(ref=0, tp=0, fn=0, fp=0, excluded=0, tp_all=0, fn_all=0, fp_all=0, strips=0)
    row.update(strips_unreadable=0)
    return row


def _count_classes(
    row: dict[str, Any],
    truth: Sequence[str],
    ref_idx: np.ndarray,
    labels: Sequence[str | None],
    det_idx: np.ndarray,
    false_kept: np.ndarray,
) -> None:
    """Add one strip's beats to ``row["ref_by_class"]`` and ``row["confusion"]``.

    ``truth`` (n_ref,) scored classes of the strip's reference beats; ``ref_idx`` (m,) and
    ``det_idx`` (m,) the matched pairs (reference index, detection index into ``labels``
    (n_det,)) whose detection is classified; ``false_kept`` detection indices (classified,
    matching no reference beat).
    """
    by_class = row.setdefault("ref_by_class", {})
    conf = row.setdefault("confusion", {})
    for t in truth:
        by_class[t] = by_class.get(t, 0) + 1
    matched = zip(ref_idx, det_idx, strict=True)
    pairs = [(truth[int(i)], labels[int(d)]) for i, d in matched]
    pairs += [(_O, labels[int(d)]) for d in false_kept]
    for t, said in pairs:
        if said is None:  # a classified beat always has a label; keep the books honest anyway
            raise ValueError("a classified beat has no label")
        cell = conf.setdefault(t, {})
        cell[said] = cell.get(said, 0) + 1


def stress_record(
    stem: Path,
    noise_dir: Path,
    noise_type: str,
    snrs: Sequence[float],
    *,
    annotated: bool = False,
    thresholds: QualityThresholds | None = None,
    predictor: BeatLabeller | None = None,
    max_strips: int | None = None,
) -> list[dict[str, Any]]:
    """Noise stress test of one record with one noise type at each SNR.

    Parameters
    ----------
    stem : Path
        The clean MIT-BIH record (without extension, 360 Hz).
    noise_dir : Path
        nstdb 1.0.0 (``bw``, ``em``, ``ma``).
    noise_type : str
        ``"bw"``, ``"em"``, ``"ma"``, or ``"clean"``: the same strips without noise (one row,
        ``snr_db`` None; ``snrs`` is ignored).
    snrs : sequence of float
        SNRs in dB.
    annotated : bool
        Assess with the reference R peaks instead of detected ones.
    thresholds : QualityThresholds, optional
        Quality limits (default: the module's). Not with ``predictor``, which judges the strips
        with the service's own limits.
    predictor : BeatLabeller, optional
        The service's predictor (:func:`models.predictor.load_predictor`): each strip is then
        judged and its beats labelled by ``predictor.predict`` (the service's path), and the
        rows hold per-class counts.
    max_strips : int, optional
        Score only the first this many noisy-period strips (quick runs and tests).

    Returns
    -------
    list of dict
        One per SNR: counts ``ref``, ``tp`` (reference beats matched by a detection the service
        classifies: readable, in a strip that is not unreadable), ``fn``, ``fp``, ``excluded``,
        ``tp_all``, ``fn_all``, ``fp_all``, ``strips``, ``strips_unreadable``; with
        ``predictor`` also ``ref_by_class`` (reference beats per N/S/V/Q) and ``confusion``
        (``{reference: {label: count}}`` over the classified beats, reference ``"O"`` for a
        classified detection matching no reference beat), whose entries add up to ``tp + fp``.
    """
    if predictor is not None and thresholds is not None:
        raise ValueError("thresholds apply to the bench's own quality check, not a predictor's")
    th = thresholds or QualityThresholds()
    rec = read_record(stem)
    x, fs = _lead(rec), rec.fs
    ann = read_annotations(stem).select(WFDB_BEAT_SYMBOLS)
    normal = ann.sample[np.isin(ann.symbol, _NORMAL)]
    if noise_type == CLEAN:
        levels: list[float | None] = [None]
        mask = standard_protocol(x.shape[0], fs)
    else:
        noise, noise_fs = read_noise(noise_dir, noise_type)
        levels = [float(s) for s in snrs]
    rows = []
    for snr in levels:
        if snr is None:
            signal = x
        else:
            ref_peaks = normal if normal.size else ann.sample
            noisy = add_noise(x, fs, ref_peaks, noise[:, 0], noise_fs, snr)
            signal, mask = noisy.signal, noisy.noisy
        row = _empty_row(rec.name, noise_type, snr)
        if predictor is not None:
            row.update(ref_by_class={}, confusion={})
        for start, stop in _strips(x.shape[0], fs):
            if not mask[start:stop].all():
                continue
            if max_strips is not None and row["strips"] >= max_strips:
                break
            sel = (ann.sample >= start) & (ann.sample < stop)
            ref = ann.sample[sel] - start
            strip = signal[start:stop]
            labels: list[str | None] = []
            if predictor is None:
                q = _assess(strip, fs, ref, annotated, th)
                ok = _kept(q)
            else:
                pred = predictor.predict(strip, fs, ref if annotated else None)
                if pred.quality is None:
                    raise ValueError("the predictor did not judge the strip's quality")
                q, ok, labels = pred.quality, pred.classified, pred.labels
            ri, di = _match(ref, q.r_peaks, fs)
            row["strips"] += 1
            row["strips_unreadable"] += int(q.verdict == UNREADABLE)
            row["ref"] += int(ref.size)
            row["tp_all"] += int(ri.size)
            row["fn_all"] += int(ref.size - ri.size)
            row["fp_all"] += int(q.r_peaks.size - di.size)
            kept_pairs = ok[di] if di.size else np.zeros(0, dtype=bool)
            row["tp"] += int(kept_pairs.sum())
            row["excluded"] += int((~kept_pairs).sum())
            unmatched = np.setdiff1d(np.arange(q.r_peaks.size), di)
            false_kept = unmatched[ok[unmatched]]
            row["fp"] += int(false_kept.size)
            if q.verdict != UNREADABLE:
                row["fn"] += int(ref.size - ri.size)
            if predictor is not None:
                truth = [reference_class(s) for s in ann.symbol[sel]]
                pairs = (ri[kept_pairs], di[kept_pairs])
                _count_classes(row, truth, pairs[0], labels, pairs[1], false_kept)
        rows.append(row)
    return rows


def _pct(a: int, b: int) -> float:
    return 100.0 * a / b if b else float("nan")


_COUNTS = ("ref", "tp", "fn", "fp", "excluded", "tp_all", "fn_all", "fp_all", "strips",
           "strips_unreadable")  # fmt: skip


def class_scores(
    confusion: dict[str, dict[str, int]], ref_by_class: dict[str, int]
) -> dict[str, float]:
    """Per-class figures (%) of pooled :func:`stress_record` counts.

    For each scored class ``c`` (N, S, V with F counted as V): ``c_kept`` = share of its reference
    beats classified; ``c_se`` = classified ``c`` beats labelled ``c``; ``c_ppv`` = beats labelled
    ``c`` that are ``c`` beats, counting false detections labelled ``c`` (what a user is shown);
    ``c_ppv_matched`` = the same over reference beats only (the classifier apart from the
    detector). Reference Q beats count in neither. ``false_pct``: classified beats that are not
    beats.
    """
    out: dict[str, float] = {}
    scored = {t: confusion.get(t, {}) for t in (*SCORED_CLASSES, _O)}
    total = sum(sum(v.values()) for v in confusion.values())
    for c in SCORED_CLASSES:
        hit = scored[c].get(c, 0)
        said_c = sum(scored[t].get(c, 0) for t in SCORED_CLASSES)
        out[f"{c}_kept"] = _pct(sum(scored[c].values()), ref_by_class.get(c, 0))
        out[f"{c}_se"] = _pct(hit, sum(scored[c].values()))
        out[f"{c}_ppv"] = _pct(hit, said_c + scored[_O].get(c, 0))
        out[f"{c}_ppv_matched"] = _pct(hit, said_c)
    out["false_pct"] = _pct(sum(scored[_O].values()), total)
    return out


def _snr_key(snr: float | None) -> float:
    return float("inf") if snr is None else float(snr)


def summarise_stress(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pool the rows per (noise, SNR): readable share, gated and ungated Se / PPV in %; with
    per-class counts also :func:`class_scores` and the pooled ``confusion``."""
    keys = {(r["noise"], r["snr_db"]) for r in rows}
    order = sorted(keys, key=lambda k: (k[0] != CLEAN, k[0], -_snr_key(k[1])))
    out = []
    for noise, snr in order:
        sel = [r for r in rows if r["noise"] == noise and r["snr_db"] == snr]
        tot = {k: sum(r[k] for r in sel) for k in _COUNTS}
        entry: dict[str, Any] = {
            "noise": noise,
            "snr_db": snr,
            "ref_beats": tot["ref"],
            "readable_pct": _pct(tot["tp"], tot["ref"]),
            "se_pct": _pct(tot["tp"], tot["tp"] + tot["fn"]),
            "ppv_pct": _pct(tot["tp"], tot["tp"] + tot["fp"]),
            "se_all_pct": _pct(tot["tp_all"], tot["tp_all"] + tot["fn_all"]),
            "ppv_all_pct": _pct(tot["tp_all"], tot["tp_all"] + tot["fp_all"]),
            "strips_unreadable_pct": _pct(tot["strips_unreadable"], tot["strips"]),
        }
        if all("confusion" in r for r in sel):
            conf: dict[str, dict[str, int]] = {}
            by_class: dict[str, int] = {}
            for r in sel:
                for t, cells in r["confusion"].items():
                    for said, n in cells.items():
                        conf.setdefault(t, {})[said] = conf.get(t, {}).get(said, 0) + n
                for t, n in r["ref_by_class"].items():
                    by_class[t] = by_class.get(t, 0) + n
            entry.update(class_scores(conf, by_class))
            entry["confusion"] = conf
            entry["ref_by_class"] = by_class
        out.append(entry)
    return out


def _records(spec: str, db: Path) -> list[str]:
    if spec == "all":
        return (db / "RECORDS").read_text().split()
    if spec == "ds1":
        return list(DS1_RECORDS)
    if spec == "ds2":
        return list(DS2_RECORDS)
    if spec == "stress":
        return list(STRESS_RECORDS)
    if spec == "held-out":
        return list(HELD_OUT_RECORDS)
    return [r.strip() for r in spec.split(",") if r.strip()]


def _snr_text(snr: float | None) -> str:
    return "-" if snr is None else f"{snr:.0f}"


def _num(value: float) -> str:
    """One decimal, or "n/a" where there was nothing to count."""
    return f"{value:.1f}" if np.isfinite(value) else "n/a"


def format_detector_table(table: list[dict[str, Any]]) -> list[str]:
    """Text lines: per (noise, SNR) readable share and the detector's Se / PPV."""
    lines = [f"{'noise':<5} {'SNR':>4} {'ref':>6} {'readable%':>9} {'Se%':>6} {'PPV%':>6} "
             f"{'Se_all%':>7} {'PPV_all%':>8} {'strips_unr%':>11}"]  # fmt: skip
    for t in table:
        lines.append(f"{t['noise']:<5} {_snr_text(t['snr_db']):>4} {t['ref_beats']:>6} "
                     f"{t['readable_pct']:>9.1f} {t['se_pct']:>6.1f} {t['ppv_pct']:>6.1f} "
                     f"{t['se_all_pct']:>7.1f} {t['ppv_all_pct']:>8.1f} "
                     f"{t['strips_unreadable_pct']:>11.1f}")  # fmt: skip
    return lines


def format_class_table(table: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: per (noise, SNR) classified share and N / S / V Se / PPV (%)."""
    head = "| noise | SNR dB | classified % | false beats % |"
    rule = "|---|---|---|---|"
    for c in SCORED_CLASSES:
        head += f" {c} kept % | {c} Se % | {c} PPV % | {c} PPV matched % |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    for t in table:
        if "confusion" not in t:
            continue
        cells = [t["noise"], _snr_text(t["snr_db"]), _num(t["readable_pct"]), _num(t["false_pct"])]
        for c in SCORED_CLASSES:
            cells += [_num(t[f"{c}_{k}"]) for k in ("kept", "se", "ppv", "ppv_matched")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_markdown_table(table: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of :func:`format_detector_table`'s figures."""
    head = "| noise | SNR dB | ref beats | readable % | Se % | PPV % | Se, no gate % "
    lines = [head + "| PPV, no gate % | strips unreadable % |", "|---" * 9 + "|"]
    for t in table:
        cells = [t["noise"], _snr_text(t["snr_db"]), str(t["ref_beats"])]
        keys = ("readable_pct", "se_pct", "ppv_pct", "se_all_pct", "ppv_all_pct",
                "strips_unreadable_pct")  # fmt: skip
        cells += [_num(t[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def reference_counts(table: list[dict[str, Any]]) -> str:
    """``"N 5,104, S 100, V 312, Q 0"``: the reference beats per class of a group's strips (every
    row scores the same strips; the largest row's counts)."""
    rows = [t for t in table if "ref_by_class" in t]
    if not rows:
        return ""
    by_class = max(rows, key=lambda t: t["ref_beats"])["ref_by_class"]
    return ", ".join(f"{c} {by_class.get(c, 0):,}" for c in (*SCORED_CLASSES, _Q))


#: ``--markdown`` replaces what lies between these lines of the file (or appends them).
MD_BEGIN = "<!-- noise-stress tables: begin (generated by python -m bench.noise_stress) -->"
MD_END = "<!-- noise-stress tables: end -->"


def write_markdown(path: Path, groups: list[dict[str, Any]], header: str) -> None:
    """Put the groups' tables between :data:`MD_BEGIN` and :data:`MD_END` in ``path``."""
    lines = [MD_BEGIN, "", header, ""]
    for g in groups:
        lines += [f"#### Records {', '.join(g['records'])}", ""]
        lines += ["Detector and quality gate:", "", *format_markdown_table(g["summary"]), ""]
        counts = reference_counts(g["summary"])
        if counts:
            lines += [f"Classes (reference beats in these strips: {counts}):", ""]
            lines += [*format_class_table(g["summary"]), ""]
    lines.append(MD_END)
    block = "\n".join(lines)
    text = path.read_text() if path.is_file() else ""
    if MD_BEGIN in text and MD_END in text:
        head, rest = text.split(MD_BEGIN, 1)
        text = head + block + rest.split(MD_END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block + "\n"
    path.write_text(text)


def _load_predictor(spec: str, tracking_uri: str | None) -> BeatLabeller:
    """The service's predictor of a ``models:/...`` URI or a local model directory."""
    import torch

    from models.predictor import ArrhythmiaPredictor, load_predictor, predictor_from_model_dir

    torch.set_num_threads(1)  # a shared CPU; one strip at a time gains nothing from more
    if Path(spec).is_dir():
        predictor = predictor_from_model_dir(spec)
    else:
        predictor = load_predictor(spec, tracking_uri=tracking_uri)
    if not isinstance(predictor, ArrhythmiaPredictor):
        raise ValueError(f"{spec} is not an arrhythmia model")
    return predictor


def _run_clean(args: argparse.Namespace, db: Path, t0: float) -> dict[str, Any]:
    names = _records(args.records[0] if args.records else "all", db)
    rows = []
    for name in names:
        rows.append(clean_record(db / name, annotated=args.annotated))
        r = rows[-1]
        logger.info("%s: %d of %d matched beats unreadable", name, r["lost"], r["matched"])
    matched = sum(r["matched"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    reasons: dict[str, int] = {}
    for r in rows:
        for k, v in r["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    summary = {
        "records": len(rows),
        "reference_beats": sum(r["ref"] for r in rows),
        "matched": matched,
        "missed_by_detector": sum(r["missed"] for r in rows),
        "unreadable": lost,
        "unreadable_pct": _pct(lost, matched),
        "noisy_pct": _pct(sum(r["noisy"] for r in rows), matched),
        "strips": sum(r["strips"] for r in rows),
        "strips_unreadable": sum(r["strips_unreadable"] for r in rows),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "worst_records": sorted(
            ((r["record"], r["lost"]) for r in rows if r["lost"]), key=lambda kv: -kv[1]
        )[:8],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary, indent=1))
    return {"rows": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("clean", "stress"))
    parser.add_argument("--raw-root", type=Path, default=None, help="default: mirror or data/raw")
    parser.add_argument(
        "--records",
        action="append",
        help="all | ds1 | ds2 | stress (118,119,101,106,205,220) | held-out (100,103,113,117,121,"
        "123) | 100,101,...; stress: repeat for several groups, one table each",
    )
    parser.add_argument("--noises", default=",".join((CLEAN, *NOISE_TYPES)))
    parser.add_argument("--snrs", default=",".join(f"{s:g}" for s in STANDARD_SNRS_DB))
    parser.add_argument("--annotated", action="store_true", help="reference R peaks, not detected")
    parser.add_argument(
        "--classify",
        metavar="MODEL",
        help="stress: label the beats with this arrhythmia model through the service's predictor "
        "(models:/ecg-arrhythmia@champion or a local model directory) for per-class Se / PPV",
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking / registry URI for models:/ URIs")
    parser.add_argument("--max-strips", type=int, help="stress: strips per row (quick runs)")
    parser.add_argument("--json", type=Path, help="write the per-record rows and summary here")
    parser.add_argument(
        "--markdown",
        type=Path,
        help="stress: write the tables into this markdown file (between its generated-table "
        "markers, e.g. bench/NOISE_STRESS.md)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.raw_root or default_raw_root()
    db = root / "mitdb" / "1.0.0"
    if not (db / "RECORDS").is_file():
        parser.error(f"no MIT-BIH database at {db}; pass --raw-root or run `ecg download mitdb`")
    t0 = time.perf_counter()
    if args.what == "clean":
        if args.classify:
            parser.error("--classify applies to `stress` only")
        result = _run_clean(args, db, t0)
    else:
        noise_dir = root / "nstdb" / "1.0.0"
        if not (noise_dir / "em.hea").is_file():
            parser.error(f"no nstdb at {noise_dir}; run `ecg download nstdb`")
        noises = [n.strip() for n in args.noises.split(",") if n.strip()]
        unknown = sorted(set(noises) - {CLEAN, *NOISE_TYPES})
        if unknown:
            parser.error(
                f"unknown noise {', '.join(unknown)}; use {CLEAN}, {', '.join(NOISE_TYPES)}"
            )
        try:
            snrs = [float(s) for s in args.snrs.split(",")]
        except ValueError:
            parser.error(f"--snrs must be numbers separated by commas, got {args.snrs!r}")
        predictor = None
        if args.classify:
            try:
                predictor = _load_predictor(args.classify, args.tracking_uri)
            except Exception as err:  # any load failure is the user's to fix
                parser.error(f"cannot load the model {args.classify}: {err}")
        result = {"groups": []}
        for spec in args.records or ["stress"]:
            names = _records(spec, db)
            missing = [n for n in names if not (db / f"{n}.hea").is_file()]
            if missing:
                parser.error(f"no record {', '.join(missing)} in {db}")
            rows = []
            for name in names:
                for noise_type in noises:
                    rows.extend(
                        stress_record(
                            db / name,
                            noise_dir,
                            noise_type,
                            snrs,
                            annotated=args.annotated,
                            predictor=predictor,
                            max_strips=args.max_strips,
                        )
                    )
                logger.info("%s done (%.0f s)", name, time.perf_counter() - t0)
            table = summarise_stress(rows)
            peaks = "annotated" if args.annotated else "detected"
            print(f"\nrecords {','.join(names)}; peaks: {peaks}; model: {args.classify or '-'}")
            print("\n".join(format_detector_table(table)))
            if predictor is not None:
                print(f"\nreference beats in these strips: {reference_counts(table)}")
                print("\n".join(format_class_table(table)))
            result["groups"].append({"records": names, "rows": rows, "summary": table})
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"\n{result['seconds']:.0f} s")
        if args.markdown:
            command = "python -m bench.noise_stress " + " ".join(argv or sys.argv[1:])
            header = (
                f"`{command}` ({time.strftime('%Y-%m-%d', time.gmtime())}, "
                f"{result['seconds']:.0f} s; peaks {'annotated' if args.annotated else 'detected'}"
                f"; model {args.classify or 'none'})"
            )
            write_markdown(args.markdown, result["groups"], header)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
