"""Beat context: RR and morphology relative to the strip, on synthetic peaks and real MIT-BIH."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.beat_context import (
    CONTEXT_FEATURE_NAMES,
    RELATIVE_FEATURE_NAMES,
    BeatContextConfig,
    _shift_best,
    beat_context,
    context_from_windows,
    rr_context,
    running_templates,
)
from models.labels import AAMI_CLASSES, WFDB_BEAT_SYMBOLS
from models.preprocessing import PreprocessConfig, beat_windows, preprocess_signal
from pipeline.beat_sequences import record_beats
from pipeline.records import read_annotations, read_record

FIXTURE_DB = Path(__file__).resolve().parents[1] / "fixtures" / "mitdb_excerpt" / "mitdb" / "1.0.0"

FS = 360.0
CFG = BeatContextConfig()


def _col(name: str) -> int:
    return CONTEXT_FEATURE_NAMES.index(name)


def test_regular_rhythm_has_zero_log_ratios() -> None:
    peaks = np.arange(20) * 288  # 0.8 s at 360 Hz
    rr = rr_context(peaks, FS, CFG)
    assert rr.shape == (20, 9)
    np.testing.assert_allclose(rr[:, 2:7], 0.0, atol=1e-6)
    np.testing.assert_allclose(rr[1:, 0], 0.8, atol=1e-6)
    assert rr[0, _col("has_pre")] == 0 and rr[1:, _col("has_pre")].all()
    assert rr[-1, _col("has_post")] == 0 and rr[:-1, _col("has_post")].all()


def test_premature_beat_is_early_against_the_previous_rhythm() -> None:
    rr_s = [0.8] * 15 + [0.5, 1.1] + [0.8] * 5  # a premature beat and its compensatory pause
    peaks = np.round(np.concatenate([[0.0], np.cumsum(rr_s)]) * FS).astype(np.int64)
    rr = rr_context(peaks, FS, CFG)
    i = 16  # the premature beat: pre-RR 0.5 s, post-RR 1.1 s
    assert rr[i, _col("log_pre_short")] == pytest.approx(np.log(0.5 / 0.8), abs=1e-3)
    assert rr[i, _col("log_post_short")] == pytest.approx(np.log(1.1 / 0.8), abs=1e-3)
    # its own short pre-RR is not in its reference: the reference is the 10 intervals before it
    assert rr[i - 1, _col("log_pre_short")] == pytest.approx(0.0, abs=1e-6)


def test_strip_start_uses_the_first_k_intervals() -> None:
    # 12 beats, 11 intervals; every beat's reference is the strip's first 10 (short) / all (long)
    rr_s = np.array([0.7, 0.9, 0.8, 0.6, 1.0, 0.8, 0.7, 0.9, 0.8, 0.8, 0.75])
    peaks = np.round(np.concatenate([[0.0], np.cumsum(rr_s)]) * FS).astype(np.int64)
    rr = rr_context(peaks, FS, CFG)
    pre = np.diff(peaks) / FS
    short_ref = pre[:10].mean()
    long_ref = pre.mean()
    for i in range(1, 11):
        assert rr[i, _col("log_pre_short")] == pytest.approx(
            np.log(pre[i - 1] / short_ref), abs=1e-4
        )
        assert rr[i, _col("log_pre_long")] == pytest.approx(np.log(pre[i - 1] / long_ref), abs=1e-4)
    # beat 11 has 10 intervals before its own pre-RR: a true history window
    assert rr[11, _col("log_pre_short")] == pytest.approx(
        np.log(pre[10] / pre[:10].mean()), abs=1e-4
    )


def test_rr_context_rejects_unsorted_peaks() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        rr_context(np.array([10, 5, 20]), FS, CFG)


def test_running_templates_window_and_start() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(50, 12)).astype(np.float32)
    t = running_templates(w, 30)
    np.testing.assert_allclose(t[:30], np.broadcast_to(np.median(w[:30], axis=0), (30, 12)))
    np.testing.assert_allclose(t[30], np.median(w[0:30], axis=0), rtol=1e-6)
    np.testing.assert_allclose(t[49], np.median(w[19:49], axis=0), rtol=1e-6)
    short = running_templates(w[:9], 30)  # a 10-s strip: the whole strip's median
    np.testing.assert_allclose(short, np.broadcast_to(np.median(w[:9], axis=0), (9, 12)))


def test_beat_context_rejects_peaks_outside_the_signal() -> None:
    x = np.zeros(3600, dtype=np.float32)
    with pytest.raises(ValueError, match="must lie in"):
        beat_context(x, FS, np.array([100, 4000]), PreprocessConfig(), CFG)


def test_ten_second_strip_of_a_real_record(mitdb_dir: Path) -> None:
    rb = record_beats(mitdb_dir, "mitdb", "100")
    n = int(10 * rb.fs)
    peaks = rb.sample[rb.sample < n]
    assert 8 <= peaks.size <= 15
    ctx = beat_context(rb.lead[:n], rb.fs, peaks, PreprocessConfig(), CFG)
    assert ctx.waves.shape == (peaks.size, 2, PreprocessConfig().beat_window_samples)
    assert ctx.features.shape == (peaks.size, len(CONTEXT_FEATURE_NAMES))
    assert np.isfinite(ctx.features).all() and np.isfinite(ctx.waves).all()
    # a normal strip: every beat looks like the strip's median beat
    assert ctx.features[:, _col("template_corr")].min() > 0.9
    assert ctx.select(RELATIVE_FEATURE_NAMES).shape[1] == len(RELATIVE_FEATURE_NAMES)


def test_real_ectopic_beats_stand_out(mitdb_dir: Path) -> None:
    """Record 119 (V beats) and 209 (S beats): 5 min each, classes differ as the literature says."""
    pre, n_v, n_s = PreprocessConfig(), AAMI_CLASSES.index("V"), AAMI_CLASSES.index("S")
    n_n = AAMI_CLASSES.index("N")
    rb = record_beats(mitdb_dir, "mitdb", "119")
    m = rb.sample < int(300 * rb.fs)
    ctx = beat_context(rb.lead[: int(300 * rb.fs)], rb.fs, rb.sample[m], pre, CFG)
    aami = rb.aami[m]
    corr, qrs = ctx.features[:, _col("template_corr")], ctx.features[:, _col("template_qrs_diff")]
    assert (aami == n_v).sum() > 20
    assert np.median(corr[aami == n_v]) < np.median(corr[aami == n_n]) - 0.2
    assert np.median(qrs[aami == n_v]) > 2 * np.median(qrs[aami == n_n])

    rb = record_beats(mitdb_dir, "mitdb", "209")
    m = rb.sample < int(300 * rb.fs)
    ctx = beat_context(rb.lead[: int(300 * rb.fs)], rb.fs, rb.sample[m], pre, CFG)
    aami = rb.aami[m]
    early = ctx.features[:, _col("log_pre_short")]
    assert (aami == n_s).sum() > 10
    assert np.median(early[aami == n_s]) < np.median(early[aami == n_n]) - 0.15


# --------------------------------------------------------------------------- the fast forms
def _excerpt_windows(record: str) -> tuple[np.ndarray, np.ndarray]:
    """Beat windows (n, 87) at 125 Hz and R peaks at 360 Hz of a 10-s excerpt record."""
    pre = PreprocessConfig()
    raw = read_record(FIXTURE_DB / record).lead("MLII")
    peaks = read_annotations(FIXTURE_DB / record).select(WFDB_BEAT_SYMBOLS).sample
    x = preprocess_signal(raw, FS, pre)
    return beat_windows(x, np.round(peaks * pre.fs_target / FS).astype(np.int64), pre), peaks


def _shift_best_loop(
    beats: np.ndarray, templates: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """The plain form: one shift at a time, keeping a strictly better correlation (from -1)."""
    n, w = beats.shape
    core_t = templates[:, m : w - m] if m else templates
    tc = core_t - core_t.mean(axis=1, keepdims=True)
    tn = np.sqrt((tc**2).sum(axis=1))
    best, best_shift = np.full(n, -1.0), np.zeros(n, dtype=np.int64)
    for s in range(-m, m + 1):
        seg = beats[:, m + s : w - m + s] if m else beats
        bc = seg - seg.mean(axis=1, keepdims=True)
        bn = np.sqrt((bc**2).sum(axis=1))
        corr = (bc * tc).sum(axis=1) / np.maximum(bn * tn, 1e-9)
        better = corr > best
        best, best_shift = np.where(better, corr, best), np.where(better, s, best_shift)
    return best, best_shift


@pytest.mark.parametrize("record", ["100", "114", "118"])
def test_all_shifts_at_once_equal_the_shift_by_shift_scan(record: str) -> None:
    w, _ = _excerpt_windows(record)
    rng = np.random.default_rng(int(record))
    noisy = (w + rng.normal(scale=0.3, size=w.shape)).astype(np.float32)
    for templates in (running_templates(w, 30), running_templates(w, 3), w[::-1].copy()):
        for m in (0, 1, 5, 21):
            got, want = _shift_best(noisy, templates, m), _shift_best_loop(noisy, templates, m)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), m
    # ties (a flat beat correlates 0 at every shift) keep the first shift; NaN never wins
    flat = np.zeros_like(w[:3])
    flat[1, 40] = np.nan
    got, want = _shift_best(flat, w[:3], 5), _shift_best_loop(flat, w[:3], 5)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert np.array_equal(got[1], [-5, 0, -5])


def _rr_context_plain(r_peaks: np.ndarray, fs: float, cfg: BeatContextConfig) -> np.ndarray:
    """The plain form of rr_context: each reference mean from its own cumulative sum."""
    r = np.asarray(r_peaks, dtype=np.float64)
    n = r.shape[0]
    if n < 2:
        out = np.zeros((n, 9), dtype=np.float32)
        out[:, :2] = 0.8
        return out
    rr = np.diff(r) / fs

    def means(k: int) -> np.ndarray:
        csum = np.concatenate([[0.0], np.cumsum(rr)])
        end = np.arange(n) - 1
        start = end - k
        short = start < 0
        start, end = np.where(short, 0, start), np.where(short, min(k, n - 1), end)
        return (csum[end] - csum[start]) / np.maximum(end - start, 1)

    short, long = means(cfg.rr_short_beats), means(cfg.rr_long_beats)
    has_pre, has_post = np.arange(n) > 0, np.arange(n) < n - 1
    pre = np.where(has_pre, np.concatenate([[0.0], rr]), short)
    post = np.where(has_post, np.concatenate([rr, [0.0]]), short)

    def logratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.clip(np.log(np.maximum(a, 1e-3) / np.maximum(b, 1e-3)), -3.0, 3.0)

    cols = (pre, post, logratio(pre, short), logratio(post, short), logratio(pre, long),
            logratio(post, long), logratio(short, long), has_pre, has_post)  # fmt: skip
    return np.stack(cols, axis=1).astype(np.float32)


def test_rr_context_equals_the_plain_form() -> None:
    rng = np.random.default_rng(7)
    cfgs = [CFG, BeatContextConfig(rr_short_beats=1, rr_long_beats=3)]
    for n in (1, 2, 3, 4, 11, 12, 60, 400):
        for spread in (0.02, 0.5):  # regular rhythm, chaotic rhythm (log ratios clipped)
            rr_s = rng.lognormal(np.log(0.8), spread, size=n) + (rng.random(n) < 0.05) * 5
            peaks = np.cumsum(np.round(rr_s * FS)).astype(np.int64)
            for cfg in cfgs:
                assert np.array_equal(rr_context(peaks, FS, cfg), _rr_context_plain(peaks, FS, cfg))


def test_context_arrays_are_contiguous_float32() -> None:
    """What the models read straight into tensors: C-ordered float32, one row per beat."""
    w, peaks = _excerpt_windows("118")
    for k in (0, 1, len(peaks)):
        ctx = context_from_windows(w[:k], peaks[:k], FS, 125.0, 31, CFG)
        for a in (ctx.waves, ctx.features, ctx.templates):
            assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"] and a.shape[0] == k
        assert ctx.waves.shape[1:] == (2, w.shape[1])
        assert ctx.features.shape[1] == len(CONTEXT_FEATURE_NAMES)
