"""The arrhythmia answer of a segment, shared by the JSON and the file endpoints.

Turns the predictor's per-beat arrays (:class:`models.predictor.BeatPredictions`: R peaks,
probabilities with NaN rows for unclassified beats, quality verdicts) into the response models:
unreadable beats answer ``"quality": "unreadable"`` with a null class and null probabilities and
say why; the segment's verdict and reasons come with every answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from models.predictor import BeatPredictions
from models.quality import GOOD, NOISY, UNREADABLE, QualityThresholds, Verdict
from service.schemas import ArrhythmiaSummary, BeatOut, SegmentQuality

__all__ = [
    "BeatArrays",
    "beats_out",
    "merge_quality",
    "no_beats_warning",
    "nonfinite_outputs",
    "summary",
]

#: Share of unreadable beats above which a record pieced from several segments is unreadable.
_MAX_UNREADABLE_SHARE = QualityThresholds().max_unreadable_share


class BeatArrays:
    """The beats of one answer: arrays ``(n_beats, ...)`` taken from one or more predictions."""

    def __init__(
        self,
        r_peaks: np.ndarray,
        probabilities: np.ndarray,
        verdicts: Sequence[Verdict],
        reasons: Sequence[Sequence[str]],
    ) -> None:
        self.r_peaks = np.asarray(r_peaks, dtype=np.int64)
        self.probabilities = probabilities
        self.verdicts = list(verdicts)
        self.reasons = [list(r) for r in reasons]

    @classmethod
    def of(
        cls, pred: BeatPredictions, keep: np.ndarray | None = None, offset: int = 0
    ) -> BeatArrays:
        """The beats of ``pred`` (those in the bool mask ``keep``), R peaks moved by ``offset``."""
        idx = np.arange(len(pred.r_peaks)) if keep is None else np.flatnonzero(keep)
        verdicts, reasons = pred.beat_verdicts, pred.beat_reasons
        return cls(
            np.asarray(pred.r_peaks, dtype=np.int64)[idx] + offset,
            pred.probabilities[idx],
            [verdicts[i] for i in idx],
            [reasons[i] for i in idx],
        )

    @classmethod
    def concat(cls, parts: Sequence[BeatArrays], n_classes: int) -> BeatArrays:
        """The beats of several parts in order."""
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros((0, n_classes), np.float32), [], [])
        return cls(
            np.concatenate([p.r_peaks for p in parts]),
            np.concatenate([p.probabilities for p in parts]),
            [v for p in parts for v in p.verdicts],
            [r for p in parts for r in p.reasons],
        )


def nonfinite_outputs(pred: BeatPredictions) -> bool:
    """True when the model gave a non-finite answer for a beat the quality check let through."""
    readable = np.array([v != UNREADABLE for v in pred.beat_verdicts], dtype=bool)
    return bool((readable & ~np.isfinite(pred.probabilities).all(axis=1)).any())


def beats_out(beats: BeatArrays, classes: Sequence[str], fs: float) -> list[BeatOut]:
    """One :class:`BeatOut` per beat; null class and probabilities where it is unclassified."""
    out = []
    for s, row, verdict, reasons in zip(
        beats.r_peaks, beats.probabilities, beats.verdicts, beats.reasons, strict=True
    ):
        classified = bool(np.isfinite(row).all())
        out.append(
            BeatOut(
                sample=int(s),
                time_s=float(s) / fs,
                label=classes[int(row.argmax())] if classified else None,
                probabilities=dict(zip(classes, row.tolist(), strict=True)) if classified else None,
                quality=verdict if classified else UNREADABLE,
                quality_reasons=list(reasons),
            )
        )
    return out


def summary(beats: list[BeatOut], classes: Sequence[str]) -> ArrhythmiaSummary:
    """Counts of the classified beats per class, and the share not classified N."""
    counts = {c: 0 for c in classes}
    for beat in beats:
        if beat.label is not None:
            counts[beat.label] += 1
    n = sum(counts.values())
    return ArrhythmiaSummary(
        n_beats=len(beats),
        counts=counts,
        abnormal_fraction=(n - counts.get("N", 0)) / n if n else None,
    )


def merge_quality(
    parts: Sequence[tuple[Verdict, Sequence[str]]], beats: list[BeatOut]
) -> SegmentQuality:
    """The verdict of one segment, or of a record classified in several segments.

    One part keeps its own verdict. Several parts follow :func:`models.quality.assess_strip`'s
    rule over the whole: unreadable when no beat was found, when more than half of the beats are
    unreadable or when every part is; noisy when any part or beat is not good; reasons by how
    many parts and beats name them.
    """
    n_unreadable = sum(b.quality == UNREADABLE for b in beats)
    if len(parts) == 1:
        verdict, reasons = parts[0]
        return SegmentQuality(
            verdict=verdict, reasons=list(reasons), n_unreadable_beats=n_unreadable
        )
    counts: Counter[str] = Counter()
    for _, part_reasons in parts:
        counts.update(part_reasons)
    for beat in beats:
        counts.update(beat.quality_reasons)
    if (
        not beats
        or n_unreadable / len(beats) > _MAX_UNREADABLE_SHARE
        or all(v == UNREADABLE for v, _ in parts)
    ):
        merged: Verdict = UNREADABLE
    elif n_unreadable or any(v != GOOD for v, _ in parts) or any(b.quality == NOISY for b in beats):
        merged = NOISY
    else:
        merged = GOOD
    reasons = [] if merged == GOOD else [name for name, _ in counts.most_common()]
    if not beats and "no_beats" not in reasons:
        reasons.insert(0, "no_beats")
    return SegmentQuality(verdict=merged, reasons=reasons, n_unreadable_beats=n_unreadable)


def no_beats_warning(quality: SegmentQuality, beats: list[BeatOut], what: str) -> list[str]:
    """The warning of an answer without classes: no beats, or an unreadable signal and why."""
    if not beats:
        return [f"no beats found: the {what} may be too short, flat or noisy"]
    if quality.verdict == UNREADABLE:
        why = ", ".join(quality.reasons) or "quality checks failed"
        return [f"the {what} is unreadable ({why}): no beat was classified"]
    return []
