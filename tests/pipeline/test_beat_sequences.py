"""Beat-sequence datasets from real mitdb and svdb records in the mirror."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.labels import AAMI_CLASSES
from pipeline.beat_sequences import (
    BeatSequences,
    build_sequences,
    concat_sequences,
    ds1_records,
    svdb_records,
)


@pytest.fixture(scope="module")
def svdb_dir(shared_physionet: Path) -> Path:
    d = shared_physionet / "svdb" / "1.0.0"
    if not d.is_dir():
        pytest.skip("svdb is not in the mirror")
    return d


def test_ds1_training_records_leave_out_201() -> None:
    recs = ds1_records()
    assert "201" not in recs and len(recs) == 21


def test_svdb_record_at_its_own_rate(svdb_dir: Path, tmp_path: Path) -> None:
    recs = svdb_records(svdb_dir)
    assert len(recs) >= 1 and "800" in recs
    d = build_sequences(svdb_dir, "svdb", ["800"], "10")
    assert len(d) > 1500
    assert (d.record == "svdb/800").all()
    assert d.waves.shape[1:] == (2, 87) and np.isfinite(d.features).all()
    # 128 Hz: 30 min of 10-s strips, beats in time order inside strips
    assert 170 <= len(np.unique(d.strip)) <= 181
    assert (np.diff(d.sample) > 0).all()
    # labels follow AAMI with F merged into V; svdb 800 has N, S and V beats
    assert set(np.unique(d.label)) <= {-1, 0, 1, 2}
    assert (d.label == 1).sum() == (d.aami == AAMI_CLASSES.index("S")).sum() > 0
    f = d.aami == AAMI_CLASSES.index("F")
    assert (d.label[f] == 2).all()
    d.save(tmp_path / "x.npz")
    back = BeatSequences.load(tmp_path / "x.npz")
    np.testing.assert_array_equal(back.label, d.label)


def test_mixed_strips_are_seeded_and_concatenation_keeps_strips_apart(mitdb_dir: Path) -> None:
    a = build_sequences(mitdb_dir, "mitdb", ["100"], "mixed")
    b = build_sequences(mitdb_dir, "mitdb", ["100"], "mixed")
    np.testing.assert_array_equal(a.strip, b.strip)  # same record, same strips
    lengths = np.bincount(a.strip)
    assert lengths.min() >= 1 and len(lengths) > 5
    both = concat_sequences([a, b])
    assert len(np.unique(both.strip)) == 2 * len(np.unique(a.strip))
    with pytest.raises(ValueError, match="unknown database"):
        build_sequences(mitdb_dir, "ptbdb", ["100"])
