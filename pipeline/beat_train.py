"""Train a :class:`models.beat_sequence.BeatSequenceModel` on beat sequences; predict, calibrate
and score.

Training reads windows of ``seq_len`` consecutive beats inside each strip (a new random phase every
epoch, so the model meets every beat at every position of a window), cross-entropy on labelled
beats only, optional class weights. The epoch count is part of the recipe; a caller that holds
validation patients out can score every epoch through ``on_epoch`` and stop early (it returns True),
as ``ecg train-beats`` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.beat_context import CONTEXT_FEATURE_NAMES
from models.beat_sequence import BeatSequenceConfig, BeatSequenceModel, model_inputs, strip_chunks
from pipeline.beat_sequences import LABEL_CLASSES, BeatSequences

__all__ = [
    "DECISION_OFFSET_GRID",
    "BeatTrainConfig",
    "choose_decision_rule",
    "class_weights",
    "decide",
    "expected_calibration_error",
    "fit_temperature",
    "per_class_scores",
    "predict_logits",
    "softmax",
    "train_beat_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BeatTrainConfig:
    """How a beat-sequence model is trained.

    Attributes
    ----------
    epochs, batch_size, seq_len : int
        Passes over the data, sequences per step, beats per training sequence.
    lr, weight_decay : float
        AdamW settings (cosine decay to zero over the run).
    class_weighting : {"none", "sqrt", "balanced"}
        Cross-entropy weights ``(n_max / n_c) ** p`` with p = 0, 0.5, 1.
    seed : int
    """

    epochs: int = 6
    batch_size: int = 32
    seq_len: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    class_weighting: Literal["none", "sqrt", "balanced"] = "sqrt"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_weights(labels: np.ndarray, n_classes: int, how: str) -> np.ndarray:
    """Cross-entropy weights per class from labelled beats (``-1`` ignored), float32 ``(k,)``."""
    counts = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    power = {"none": 0.0, "sqrt": 0.5, "balanced": 1.0}[how]
    w = (counts.max() / counts) ** power
    return (w / w[np.argmax(counts)]).astype(np.float32)


def _strip_ranges(strip: np.ndarray) -> np.ndarray:
    """``(n_strips, 2)`` [start, end) of each run of equal strip ids."""
    if strip.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    cut = np.flatnonzero(np.diff(strip) != 0) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [strip.size]])
    return np.stack([starts, ends], axis=1)


def _chunks(ranges: np.ndarray, seq_len: int, rng: np.random.Generator | None) -> np.ndarray:
    """Cut each strip range into windows of at most ``seq_len`` beats, ``(n_chunks, 2)``.

    With ``rng`` the first window of each strip has a random length (a random phase); without,
    windows start at the strip start.
    """
    out = []
    for a, b in ranges.tolist():
        pos = a
        if rng is not None and b - a > seq_len:
            first = int(rng.integers(seq_len // 4, seq_len + 1))
            out.append((a, a + first))
            pos = a + first
        while pos < b:
            end = min(b, pos + seq_len)
            out.append((pos, end))
            pos = end
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _batch(
    waves: np.ndarray, feats: np.ndarray, labels: np.ndarray, chunks: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = chunks[:, 1] - chunks[:, 0]
    t = int(lengths.max())
    b = chunks.shape[0]
    wv = np.zeros((b, t, *waves.shape[1:]), dtype=np.float32)
    ft = np.zeros((b, t, feats.shape[1]), dtype=np.float32)
    lb = np.full((b, t), -1, dtype=np.int64)
    for i, (s, e) in enumerate(chunks.tolist()):
        wv[i, : e - s] = waves[s:e]
        ft[i, : e - s] = feats[s:e]
        lb[i, : e - s] = labels[s:e]
    return (
        torch.from_numpy(wv),
        torch.from_numpy(ft),
        torch.from_numpy(lb),
        torch.from_numpy(lengths.astype(np.int64)),
    )


def _inputs(data: BeatSequences, config: BeatSequenceConfig) -> tuple[np.ndarray, np.ndarray]:
    return model_inputs(data.waves, data.features, CONTEXT_FEATURE_NAMES, config)


def train_beat_model(
    model_cfg: BeatSequenceConfig,
    train_cfg: BeatTrainConfig,
    data: BeatSequences,
    on_epoch: Callable[[int, BeatSequenceModel, float], bool | None] | None = None,
) -> BeatSequenceModel:
    """Train a model on ``data`` (all of it: hold validation records out before calling).

    Parameters
    ----------
    model_cfg : BeatSequenceConfig
    train_cfg : BeatTrainConfig
    data : BeatSequences
    on_epoch : callable, optional
        Called after every epoch as ``on_epoch(epoch, model, mean_train_loss)`` (model in eval
        mode); training stops early when it returns True.

    Returns
    -------
    BeatSequenceModel
        In eval mode.
    """
    torch.manual_seed(train_cfg.seed)
    rng = np.random.default_rng(train_cfg.seed)
    model = BeatSequenceModel(model_cfg)
    waves, feats = _inputs(data, model_cfg)
    labels = data.label
    weight = torch.from_numpy(
        class_weights(labels, len(model_cfg.classes), train_cfg.class_weighting)
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=-1)
    opt = torch.optim.AdamW(
        model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
    )
    ranges = _strip_ranges(data.strip)
    n_steps = train_cfg.epochs * int(
        np.ceil(len(_chunks(ranges, train_cfg.seq_len, None)) / train_cfg.batch_size)
    )
    # One-cycle schedule; a run of under 20 steps (tiny test data) keeps the rate constant, as
    # OneCycleLR divides by zero when its 10% warm-up rounds to a single step.
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=train_cfg.lr, total_steps=n_steps, pct_start=0.1
        )
        if n_steps >= 20
        else None
    )
    step = 0
    for epoch in range(train_cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        chunks = _chunks(ranges, train_cfg.seq_len, rng)
        chunks = chunks[rng.permutation(len(chunks))]
        total, n = 0.0, 0
        for i in range(0, len(chunks), train_cfg.batch_size):
            wv, ft, lb, ln = _batch(waves, feats, labels, chunks[i : i + train_cfg.batch_size])
            logits = model(wv, ft, ln)  # (B, T, K)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), lb.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if sched is not None and step < n_steps:
                sched.step()
            step += 1
            total += float(loss.detach()) * len(ln)
            n += len(ln)
        model.eval()
        logger.info(
            "epoch %d: loss %.4f (%.1f s)", epoch + 1, total / max(n, 1), time.perf_counter() - t0
        )
        if on_epoch is not None and on_epoch(epoch + 1, model, total / max(n, 1)) is True:
            logger.info("stopped after epoch %d", epoch + 1)
            break
    model.eval()
    return model


@torch.inference_mode()
def predict_logits(
    model: BeatSequenceModel, data: BeatSequences, max_beats: int = 64, batch_size: int = 128
) -> np.ndarray:
    """Uncalibrated logits for every beat of ``data``, float32 ``(n, k)``, strip by strip.

    Strips longer than ``max_beats`` are read in consecutive chunks, as
    :func:`models.beat_sequence.predict_strip` does (:func:`~models.beat_sequence.strip_chunks`).
    """
    model.eval()
    waves, feats = _inputs(data, model.config)
    chunks = [
        (a + s, a + e)
        for a, b in _strip_ranges(data.strip).tolist()
        for s, e in strip_chunks(b - a, max_beats)
    ]
    ch = np.asarray(chunks, dtype=np.int64).reshape(-1, 2)
    # Similar lengths together: less padding.
    order = np.argsort(ch[:, 1] - ch[:, 0])
    out = np.zeros((len(data), len(model.config.classes)), dtype=np.float32)
    dummy = np.zeros(len(data), dtype=np.int64)
    for i in range(0, len(order), batch_size):
        sel = ch[order[i : i + batch_size]]
        wv, ft, _, ln = _batch(waves, feats, dummy, sel)
        logits = model(wv, ft, ln).numpy()
        for j, (s, e) in enumerate(sel.tolist()):
            out[s:e] = logits[j, : e - s]
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``(n, k)``, float64."""
    return _softmax(np.asarray(z, dtype=np.float64))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of labelled beats (Guo et al. 2017).

    A 1-D search over log T in [-2, 2] (golden section); ``labels`` of -1 are ignored.
    """
    m = labels >= 0
    z, y = logits[m].astype(np.float64), labels[m]

    def nll(log_t: float) -> float:
        p = _softmax(z / np.exp(log_t))
        return float(-np.mean(np.log(np.maximum(p[np.arange(y.size), y], 1e-12))))

    lo, hi = -2.0, 2.0
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> np.ndarray:
    """Per-class (one-vs-rest) expected calibration error, float64 ``(k,)``.

    For class c: bin the predicted P(c) into ``n_bins`` equal-width bins; ECE is the beat-weighted
    mean of |observed frequency of c - mean predicted P(c)| over bins. Labels of -1 are ignored.
    """
    m = labels >= 0
    p, y = probs[m], labels[m]
    edges = np.linspace(0, 1, n_bins + 1)
    out = np.zeros(p.shape[1])
    for c in range(p.shape[1]):
        pc = p[:, c]
        yc = (y == c).astype(np.float64)
        idx = np.clip(np.digitize(pc, edges) - 1, 0, n_bins - 1)
        for b in range(n_bins):
            sel = idx == b
            if sel.any():
                out[c] += sel.mean() * abs(yc[sel].mean() - pc[sel].mean())
    return out


def per_class_scores(
    labels: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]
) -> dict[str, float]:
    """Sensitivity (recall), positive predictivity (precision) and F1 per class, in [0, 1].

    Beats labelled -1 are left out. Keys: ``<class>_se``, ``<class>_ppv``, ``<class>_f1``,
    ``macro_f1``, and ``<class>_n`` (beats of the class).
    """
    m = labels >= 0
    y, p = labels[m], pred[m]
    out: dict[str, float] = {}
    f1s = []
    for c, name in enumerate(classes):
        tp = float(np.sum((y == c) & (p == c)))
        n_true = float(np.sum(y == c))
        n_pred = float(np.sum(p == c))
        se = tp / n_true if n_true else float("nan")
        ppv = tp / n_pred if n_pred else float("nan")
        f1 = 2 * tp / (n_true + n_pred) if n_true + n_pred else float("nan")
        out[f"{name}_se"], out[f"{name}_ppv"], out[f"{name}_f1"] = se, ppv, f1
        out[f"{name}_n"] = n_true
        f1s.append(f1)
    out["macro_f1"] = float(np.nanmean(f1s))
    return out


#: The research's decision-rule grid: log-offsets -2 .. 2 in steps of 0.25 (bench/BEAT_RESEARCH.md).
DECISION_OFFSET_GRID: tuple[float, ...] = tuple(float(x) for x in np.arange(-2.0, 2.01, 0.25))


def decide(probs: np.ndarray, offsets: tuple[float, float]) -> np.ndarray:
    """Class index per beat: argmax of ``log P + (0, offset_S, offset_V)``, int64 ``(n,)``.

    The rule :meth:`models.beat_classifier.BeatClassifier.decide` applies with
    ``decision_offsets={"S": offsets[0], "V": offsets[1]}``; ``probs`` is ``(n, 3)`` (N, S, V).
    """
    lp = np.log(np.maximum(probs, 1e-12))
    return (lp + np.array([0.0, offsets[0], offsets[1]])).argmax(axis=1)


def choose_decision_rule(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Log-offsets added to log P(S) and log P(V) before the argmax, chosen on validation.

    Grid :data:`DECISION_OFFSET_GRID` (-2 .. 2, step 0.25) for each; the pair with the best
    macro-F1 (N, S, V) over the given validation beats wins (ties keep the smaller offsets;
    (0, 0) is the argmax).

    Parameters
    ----------
    probs : np.ndarray
        Calibrated probabilities ``(n, 3)`` (N, S, V) of validation beats.
    labels : np.ndarray
        int ``(n,)`` in 0..2, -1 for unlabelled beats (ignored).

    Returns
    -------
    tuple of float
        ``(offset_S, offset_V)``.
    """
    grid = sorted(DECISION_OFFSET_GRID, key=abs)
    best, best_pair = -1.0, (0.0, 0.0)
    for bs in grid:
        for bv in grid:
            f = per_class_scores(labels, decide(probs, (bs, bv)), LABEL_CLASSES)["macro_f1"]
            if f > best + 1e-9:
                best, best_pair = f, (float(bs), float(bv))
    return best_pair
