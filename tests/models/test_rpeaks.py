"""The R-peak detector (models/rpeaks.py) on real MIT-BIH segments where XQRS failed.

Segments come from DS1 records (where the detector was designed); each test also runs the
former detector (XQRS at 250 Hz) so that it shows the behaviour that changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from wfdb import processing

from models.labels import WFDB_BEAT_SYMBOLS
from models.preprocessing import detect_rpeaks, resample
from models.rpeaks import QRSDetectorConfig, detect_qrs, detect_xqrs
from pipeline.records import read_annotations, read_record

FS = 360.0


def _segment(mitdb_dir: Path, record: str, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """MLII from ``t0`` to ``t1`` seconds and the reference beats in it (samples at 360 Hz)."""
    a, b = int(t0 * FS), int(t1 * FS)
    lead = read_record(mitdb_dir / record).lead("MLII")[a:b]
    beats = read_annotations(mitdb_dir / record).select(WFDB_BEAT_SYMBOLS).sample
    return lead, beats[(beats >= a) & (beats < b)] - a


def _fn_fp(ref: np.ndarray, det: np.ndarray, fs: float = FS) -> tuple[int, int]:
    cmp = processing.compare_annotations(ref, det, round(0.15 * fs))
    return int(cmp.fn), int(cmp.fp)


def test_wide_premature_ventricular_beats_are_found(mitdb_dir: Path) -> None:
    # Record 208, 30-60 s: PVCs 0.45 s after the preceding beat; XQRS missed two of them.
    lead, ref = _segment(mitdb_dir, "208", 30.0, 60.0)
    assert _fn_fp(ref, detect_xqrs(lead, FS)) == (2, 0)
    assert _fn_fp(ref, detect_rpeaks(lead, FS)) == (0, 0)


def test_tall_p_waves_are_not_taken_for_beats(mitdb_dir: Path) -> None:
    # Record 108, first 10 s: large P waves; XQRS called 10 of them beats.
    lead, ref = _segment(mitdb_dir, "108", 0.0, 10.0)
    assert _fn_fp(ref, detect_xqrs(lead, FS))[1] >= 5
    fn, fp = _fn_fp(ref, detect_rpeaks(lead, FS))
    assert fn <= 1 and fp <= 1, (fn, fp)


@pytest.mark.parametrize("fs_in", [100.0, 128.0, 250.0, 500.0, 1000.0])
def test_every_rate_from_100_to_1000_hz(mitdb_dir: Path, fs_in: float) -> None:
    # Five minutes of record 208 (frequent PVCs and couplets) at rates 100-1000 Hz.
    lead, ref = _segment(mitdb_dir, "208", 0.0, 300.0)
    peaks = detect_rpeaks(resample(lead, FS, fs_in), fs_in)
    assert peaks.dtype == np.int64 and np.all(np.diff(peaks) > 0)
    fn, fp = _fn_fp(ref, np.round(peaks * FS / fs_in).astype(np.int64))
    assert fn <= 0.01 * ref.size and fp <= 0.01 * ref.size, (fn, fp, ref.size)


def test_peaks_sit_on_the_r_apex(mitdb_dir: Path) -> None:
    lead, ref = _segment(mitdb_dir, "101", 0.0, 300.0)
    det = detect_rpeaks(lead, FS)
    offsets = np.abs(det[:, None] - ref[None, :]).min(axis=1)
    assert np.percentile(offsets, 95) <= 3  # samples at 360 Hz: about 8 ms


def test_config_is_honoured_and_degenerate_input_gives_no_beats(mitdb_dir: Path) -> None:
    lead, ref = _segment(mitdb_dir, "101", 0.0, 60.0)
    # A refractory period longer than every RR interval leaves at most every other beat.
    sparse = detect_qrs(lead, FS, QRSDetectorConfig(refractory_s=1.5))
    assert 0 < sparse.size <= ref.size // 2 + 1
    assert detect_qrs(np.zeros(3600, dtype=np.float32), FS).size == 0
    assert detect_qrs(lead[:100], FS).size == 0
    assert detect_xqrs(np.zeros(3600, dtype=np.float32), FS).size == 0
