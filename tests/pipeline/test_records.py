"""pipeline.records: real WFDB files in, float32 mV arrays and clear errors out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from pipeline.errors import UserError
from pipeline.records import (
    MITDB_LEAD,
    RecordError,
    RecordMissingError,
    read_annotations,
    read_record,
)

FIXTURE_DB = Path(__file__).resolve().parents[1] / "fixtures" / "mitdb_excerpt" / "mitdb" / "1.0.0"


@pytest.fixture()
def record_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture's record 114 (stem path)."""
    for f in FIXTURE_DB.glob("114.*"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "114"


def test_reads_signal_in_mv_with_lead_names() -> None:
    rec = read_record(FIXTURE_DB / "114")
    assert rec.name == "114"
    assert rec.fs == 360.0
    assert rec.leads == ("V5", "MLII")
    assert rec.signal.dtype == np.float32
    assert rec.signal.shape == (3600, 2)
    ref = wfdb.rdrecord(str(FIXTURE_DB / "114")).p_signal
    np.testing.assert_allclose(rec.signal, ref, atol=1e-6)
    # MLII is the second column of 114: picking by name must not take column 0.
    np.testing.assert_array_equal(rec.lead(MITDB_LEAD), rec.signal[:, 1])
    assert rec.duration_s == pytest.approx(10.0)


def test_lead_selection_reorders_and_accepts_hea_suffix() -> None:
    rec = read_record(FIXTURE_DB / "114.hea", leads=["MLII", "V5"])
    assert rec.leads == ("MLII", "V5")
    full = read_record(FIXTURE_DB / "114")
    np.testing.assert_array_equal(rec.signal[:, 0], full.signal[:, 1])


def test_missing_lead_names_what_there_is() -> None:
    with pytest.raises(RecordError, match=r"no lead\(s\) \['V1'\].*'V5', 'MLII'"):
        read_record(FIXTURE_DB / "114", leads=["V1"])
    with pytest.raises(RecordError, match="no lead 'aVR'"):
        read_record(FIXTURE_DB / "114").lead("aVR")


def test_annotations_sorted_with_symbols_and_rate() -> None:
    ann = read_annotations(FIXTURE_DB / "114")
    assert ann.sample.dtype == np.int64
    assert np.all(np.diff(ann.sample) >= 0)
    assert ann.fs == 360.0
    assert list(ann.symbol).count("V") == 3
    only_v = ann.select({"V"})
    assert set(only_v.symbol) == {"V"} and only_v.sample.shape == (3,)


def test_missing_header_is_a_user_error_pointing_to_download(tmp_path: Path) -> None:
    with pytest.raises(RecordMissingError, match="ecg download") as info:
        read_record(tmp_path / "100")
    assert isinstance(info.value, UserError)


def test_missing_signal_file(record_copy: Path) -> None:
    record_copy.with_suffix(".dat").unlink()
    with pytest.raises(RecordMissingError, match=r"114\.dat"):
        read_record(record_copy)


def test_truncated_signal_file(record_copy: Path) -> None:
    dat = record_copy.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:1001])
    with pytest.raises(RecordError, match="record 114") as info:
        read_record(record_copy)
    assert not isinstance(info.value, RecordMissingError)


@pytest.mark.parametrize("header", ["", "garbage here\nnonsense\n"])
def test_damaged_header(record_copy: Path, header: str) -> None:
    record_copy.with_suffix(".hea").write_text(header)
    with pytest.raises(RecordError, match="damaged"):
        read_record(record_copy)


def test_missing_damaged_and_empty_annotations(record_copy: Path) -> None:
    atr = record_copy.with_suffix(".atr")
    good = atr.read_bytes()
    atr.write_bytes(good[:7])
    with pytest.raises(RecordError, match="damaged"):
        read_annotations(record_copy)
    atr.write_bytes(b"")
    with pytest.raises(RecordError, match="no annotations"):
        read_annotations(record_copy)
    atr.unlink()
    with pytest.raises(RecordMissingError, match=r"114\.atr"):
        read_annotations(record_copy)


def test_microvolt_records_are_converted_to_millivolts(tmp_path: Path) -> None:
    mv = np.sin(np.linspace(0, 20, 1000))[:, None] * np.array([[1.0, 0.5]])
    wfdb.wrsamp(
        "uv",
        fs=500,
        units=["uV", "uV"],
        sig_name=["I", "II"],
        p_signal=mv * 1000.0,
        fmt=["16", "16"],
        adc_gain=[10.0, 10.0],
        baseline=[0, 0],
        write_dir=str(tmp_path),
    )
    rec = read_record(tmp_path / "uv")
    assert rec.fs == 500.0
    np.testing.assert_allclose(rec.signal, mv, atol=1e-3)


def test_fixture_is_an_exact_excerpt_of_the_real_record(mitdb_dir: Path) -> None:
    full = read_record(mitdb_dir / "114")
    assert full.leads == ("V5", "MLII") and full.signal.shape == (650_000, 2)
    excerpt = read_record(FIXTURE_DB / "114")
    np.testing.assert_array_equal(excerpt.signal, full.signal[183_200:186_800])
    ann = read_annotations(mitdb_dir / "114")
    assert ann.fs == 360.0 and ann.sample.shape == (1890,)


def test_reads_a_ptbxl_record(ptbxl_dir: Path) -> None:
    rec = read_record(ptbxl_dir / "records100" / "00000" / "00001_lr")
    assert rec.fs == 100.0
    assert rec.signal.shape == (1000, 12) and rec.signal.dtype == np.float32
    assert rec.leads[:3] == ("I", "II", "III") and rec.leads[-1] == "V6"
    assert 0.05 < float(np.abs(rec.signal).max()) < 10.0  # millivolts, not microvolts
