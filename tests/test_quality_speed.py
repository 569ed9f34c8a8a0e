"""bench.quality_speed: the old-versus-new comparison finds differences when there are some, and
the current quality check and detectors give the reference revision's answers on real strips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.quality_speed import (
    REFERENCE_REV,
    REPO,
    Case,
    Impl,
    _cut,
    _read,
    compare,
    current_impl,
    reference_impl,
)


@pytest.fixture(scope="module")
def cases(mitdb_dir: Path, shared_physionet: Path) -> list[Case]:
    """A 10-s MLII strip of mitdb 119 and a 20-s one of 208 (two windows) with their annotated
    beats, and the 119 strip with strong nstdb ``ma`` noise (no beats given)."""
    import wfdb

    out = []
    for record, start, seconds in (("119", 60.0, 10.0), ("208", 300.0, 20.0)):
        sig, fs, ann = _read(mitdb_dir, record)
        x, peaks = _cut(sig, ann, fs, start, seconds)
        out.append(Case(f"{record}@{start}", x, fs, peaks))
    noise = wfdb.rdrecord(str(shared_physionet / "nstdb" / "1.0.0" / "ma"), channels=[0])
    x = out[0].signal.astype(np.float64)
    out.append(Case("119+ma", x + 2.0 * noise.p_signal[5000 : 5000 + x.shape[0], 0], 360.0, None))
    return out


def test_compare_finds_changed_answers(cases: list[Case]) -> None:
    cur = current_impl()
    calls, diffs, verdicts = compare(cur, cur, cases)
    assert calls == 3 * len(cases) + 2 and diffs == []
    assert sum(v for k, v in verdicts.items() if k.startswith("assess:")) == len(cases)

    def fewer_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
        return cur.detect_rpeaks(signal, fs)[1:]

    def other_sqi(signal: np.ndarray, fs: float, peaks: np.ndarray | None = None) -> object:
        q = cur.assess_strip(signal, fs, peaks)
        sqi = {k: v * (1 + 1e-6) if k == "psqi" else v for k, v in q.sqi.items()}
        return type(q)(**{**q.__dict__, "sqi": sqi})

    _, diffs, _ = compare(cur, Impl(fewer_peaks, cur.pantompkins, other_sqi), cases)
    assert sum("detect: peaks differ" in d for d in diffs) == len(cases)
    assert sum(".sqi[psqi]" in d for d in diffs) == 2 * len(cases) - 1  # 3 detected + 2 given


def test_current_code_gives_the_reference_answers(cases: list[Case]) -> None:
    known = subprocess.run(
        ["git", "cat-file", "-e", f"{REFERENCE_REV}^{{commit}}"], cwd=REPO, check=False
    )
    if known.returncode != 0:
        pytest.skip(f"revision {REFERENCE_REV} not in this clone")
    calls, diffs, _ = compare(reference_impl(REFERENCE_REV), current_impl(), cases)
    assert calls == 3 * len(cases) + 2
    assert diffs == []
