"""pipeline.datasets: real WFDB records in, a verified, patient-wise split dataset out."""

from __future__ import annotations

import ast
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from wfdb.processing import compare_annotations

import pipeline.dataset_store as dataset_store
from models.labels import (
    AAMI_CLASSES,
    DS1_RECORDS,
    DS2_RECORDS,
    MITDB_SYMBOL_TO_AAMI,
    MITDB_VAL_RECORDS,
    PTBXL_SUPERCLASSES,
    WFDB_BEAT_SYMBOLS,
)
from models.preprocessing import beat_inputs, detect_rpeaks
from pipeline.dataset_store import SPLITS, Dataset, load_dataset
from pipeline.datasets import prepare_dataset
from pipeline.errors import UserError
from pipeline.records import read_annotations, read_record

FIXTURE_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "mitdb_excerpt"

# DESIGN.md / de Chazal et al. (2004): AAMI beat counts of DS1 and DS2, all records.
DS1_COUNTS = {"N": 45_866, "S": 944, "V": 3_788, "F": 415}
DS2_COUNTS = {"N": 44_259, "S": 1_837, "V": 3_221, "F": 388}


def _aami_counts(db: Path, record: str) -> Counter[str]:
    ann = read_annotations(db / record)
    return Counter(MITDB_SYMBOL_TO_AAMI[s] for s in ann.symbol if s in MITDB_SYMBOL_TO_AAMI)


def _assert_parity(ds: Dataset, db: Path, record: str) -> None:
    """The stored model input equals beat_inputs() on the raw record: train/serve parity.

    With detected peaks, the items are the detector's peaks matched to labelled reference beats.
    """
    raw = read_record(db / record)
    ann = read_annotations(db / record).select(WFDB_BEAT_SYMBOLS)
    labelled = np.isin(ann.symbol, sorted(MITDB_SYMBOL_TO_AAMI))
    if ds.manifest["r_peaks"] == "detected":
        peaks = detect_rpeaks(raw.lead("MLII"), raw.fs)
        match = compare_annotations(ann.sample, peaks, round(0.15 * raw.fs)).matching_sample_nums
    else:
        peaks, match = ann.sample, np.arange(ann.sample.size)
    expected = beat_inputs(raw.lead("MLII"), raw.fs, peaks, ds.preprocess)
    items = labelled & (match >= 0)
    m = ds.arrays["record"] == record
    x_all, _ = ds.inputs(None)
    np.testing.assert_array_equal(x_all[m], expected[match[items]])
    np.testing.assert_array_equal(ds.arrays["sample"][m], peaks[match[items]])
    np.testing.assert_array_equal(ds.arrays["ref_sample"][m], ann.sample[items])
    assert np.all(np.abs(ds.arrays["sample"][m] - ds.arrays["ref_sample"][m]) <= 0.15 * raw.fs)


def _assert_patients_disjoint(ds: Dataset) -> None:
    sets = {s: set(ds.patients(s)) for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not sets[a] & sets[b], f"patients in both {a} and {b}: {sets[a] & sets[b]}"


# --------------------------------------------------------------------------- shipped fixture
@pytest.fixture()
def fixture_dataset(tmp_path: Path) -> Path:
    return prepare_dataset("mitdb", raw_root=FIXTURE_ROOT, processed_root=tmp_path / "processed")


def test_fixture_build_has_contract_arrays_and_manifest(fixture_dataset: Path) -> None:
    ds = load_dataset(fixture_dataset)
    db = FIXTURE_ROOT / "mitdb" / "1.0.0"
    a = ds.arrays
    n = len(ds)
    assert a["waves"].dtype == np.float32 and a["waves"].shape == (n, 87)
    assert a["rr"].dtype == np.float32 and a["rr"].shape == (n, 4)
    assert a["labels"].dtype == np.int64 and a["sample"].dtype == np.int64
    for key in ("record", "patient", "split"):
        assert a[key].dtype.kind == "U" and a[key].shape == (n,)
    # 114 trains, 118 validates, 100 tests.
    assert ds.records("train") == ["114"] and ds.records("val") == ["118"]
    assert ds.records("test") == ["100"]
    for record in ("100", "114", "118"):
        got = Counter(AAMI_CLASSES[i] for i in a["labels"][a["record"] == record])
        assert got == _aami_counts(db, record)
        _assert_parity(ds, db, record)
    m = ds.manifest
    assert m["format_version"] == 1 and m["dataset"] == "mitdb" and m["r_peaks"] == "annotated"
    assert "detection" not in m
    assert m["source"] == {"database": "mitdb", "version": "1.0.0"}
    assert m["classes"] == list(AAMI_CLASSES) and m["leads"] == ["MLII"]
    assert m["fs"] == 125.0 and m["input_shape"] == [87, 5] and m["n_items"] == n
    assert m["splits"]["train"]["counts"]["V"] == 3 and m["splits"]["val"]["counts"]["S"] == 5
    assert m["splits"]["test"]["patients"] == 1
    assert m["excluded"]["paced"]["records"] == ["102", "104", "107", "217"]
    assert m["excluded"]["same_subject_as_test"]["records"] == ["201"]
    assert m["excluded"]["not_downloaded"]["n_records"] == 43 - 3
    assert len(m["content_sha256"]) == 64 and m["created"]
    x, y = ds.inputs("train")
    assert x.shape == (int((a["split"] == "train").sum()), 87, 5) and x.dtype == np.float32
    assert y.dtype == np.int64
    with pytest.raises(ValueError, match=r"unknown split"):
        ds.inputs("validation")


def test_partial_download_warns_and_names_the_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets"):
        prepare_dataset("mitdb", raw_root=FIXTURE_ROOT, processed_root=tmp_path)
    assert "40 of 43 records are not downloaded" in caplog.text
    assert "ecg download mitdb" in caplog.text


def test_missing_or_empty_download_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no mitdb download.*ecg download mitdb"):
        prepare_dataset("mitdb", raw_root=tmp_path, processed_root=tmp_path / "out")
    (tmp_path / "mitdb" / "1.0.0").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no usable mitdb record.*ecg download mitdb"):
        prepare_dataset("mitdb", raw_root=tmp_path, processed_root=tmp_path / "out")
    with pytest.raises(UserError, match=r"version 9.9 is not"):
        prepare_dataset("mitdb", raw_root=tmp_path, processed_root=tmp_path / "out", version="9.9")
    with pytest.raises(UserError, match=r"unknown dataset 'mimic'"):
        prepare_dataset("mimic", raw_root=tmp_path, processed_root=tmp_path / "out")
    with pytest.raises(UserError, match=r"no ptb-xl download.*ecg download ptb-xl"):
        prepare_dataset("ptb-xl", raw_root=tmp_path, processed_root=tmp_path / "out")
    assert not (tmp_path / "out" / "mitdb").exists()


def test_damaged_record_is_skipped_with_a_reason(tmp_path: Path) -> None:
    db = tmp_path / "raw" / "mitdb" / "1.0.0"
    db.mkdir(parents=True)
    for f in (FIXTURE_ROOT / "mitdb" / "1.0.0").iterdir():
        (db / f.name).write_bytes(f.read_bytes())
    (db / "118.dat").write_bytes((db / "118.dat").read_bytes()[:999])
    ds = load_dataset(prepare_dataset("mitdb", raw_root=tmp_path / "raw", processed_root=tmp_path))
    assert ds.records() == ["100", "114"]
    assert ds.manifest["excluded"]["unreadable"]["records"] == ["118"]


def test_failed_rebuild_leaves_the_old_dataset_and_no_temp(
    fixture_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fixture_dataset.parent
    before = load_dataset(fixture_dataset)

    def crash(path: Path, manifest: dict) -> None:
        path.write_text('{"format_version": 1, "truncat')  # half-written, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(dataset_store, "_write_manifest", crash)
    with pytest.raises(OSError, match=r"disk full"):
        prepare_dataset("mitdb", raw_root=FIXTURE_ROOT, processed_root=root)
    assert sorted(p.name for p in root.iterdir()) == ["mitdb"]
    after = load_dataset(fixture_dataset)
    assert after.manifest == before.manifest


def test_rebuild_replaces_and_removes_stale_temps(fixture_dataset: Path) -> None:
    root = fixture_dataset.parent
    stale = root / ".mitdb.tmp-999999999-x"  # left by a killed run: no such pid
    stale.mkdir()
    (stale / "arrays.npz").write_bytes(b"partial")
    old_created = load_dataset(fixture_dataset).manifest["created"]
    (fixture_dataset / "marker").write_text("old")
    prepare_dataset("mitdb", raw_root=FIXTURE_ROOT, processed_root=root)
    assert sorted(p.name for p in root.iterdir()) == ["mitdb"]
    assert not (fixture_dataset / "marker").exists()
    assert load_dataset(fixture_dataset).manifest["created"] >= old_created


def test_load_rejects_missing_damaged_or_changed_datasets(fixture_dataset: Path) -> None:
    root = fixture_dataset.parent
    with pytest.raises(UserError, match=r"does not exist.*ecg prepare ptb-xl"):
        load_dataset(root / "ptb-xl")
    arrays = fixture_dataset / "arrays.npz"
    manifest = fixture_dataset / "manifest.json"
    good_arrays, good_manifest = arrays.read_bytes(), manifest.read_text()

    # Changed content: same keys and shapes, one label flipped.
    with np.load(arrays) as z:
        content = {k: z[k] for k in z.files}
    content["labels"][0] = (content["labels"][0] + 1) % 5
    np.savez(arrays, **content)
    with pytest.raises(UserError, match=r"content hash .* does not match.*ecg prepare mitdb"):
        load_dataset(fixture_dataset)
    arrays.write_bytes(good_arrays[: len(good_arrays) // 2])
    with pytest.raises(UserError, match=r"arrays.npz is damaged.*ecg prepare mitdb"):
        load_dataset(fixture_dataset)
    arrays.unlink()
    with pytest.raises(UserError, match=r"arrays.npz is missing"):
        load_dataset(fixture_dataset)
    arrays.write_bytes(good_arrays)

    manifest.write_text(good_manifest[:50])
    with pytest.raises(UserError, match=r"manifest.json is unreadable"):
        load_dataset(fixture_dataset)
    manifest.write_text(json.dumps({**json.loads(good_manifest), "format_version": 0}))
    with pytest.raises(UserError, match=r"format_version 0"):
        load_dataset(fixture_dataset)
    manifest.write_text(json.dumps({**json.loads(good_manifest), "n_items": 3}))
    with pytest.raises(UserError, match=r"n_items=3"):
        load_dataset(fixture_dataset)
    manifest.unlink()
    with pytest.raises(UserError, match=r"manifest.json is missing"):
        load_dataset(fixture_dataset)
    manifest.write_text(good_manifest)
    assert len(load_dataset(fixture_dataset)) > 0


def test_fixture_build_on_detected_peaks(tmp_path: Path) -> None:
    """Beats centred on the detector's peaks: labelled from the references they match."""
    ds = load_dataset(
        prepare_dataset("mitdb", raw_root=FIXTURE_ROOT, processed_root=tmp_path, r_peaks="detected")
    )
    db = FIXTURE_ROOT / "mitdb" / "1.0.0"
    missed = ds.manifest["detection"]["missed_reference_beats"]
    for record, split in (("114", "train"), ("118", "val"), ("100", "test")):
        got = Counter(AAMI_CLASSES[i] for i in ds.arrays["labels"][ds.arrays["record"] == record])
        for c, n in _aami_counts(db, record).items():
            assert got[c] + missed[split][c] == n
        _assert_parity(ds, db, record)
    assert ds.manifest["r_peaks"] == "detected" and ds.manifest["detection"]["tolerance_s"] == 0.15
    with pytest.raises(UserError, match=r"unknown R-peak source 'both'"):
        prepare_dataset("mitdb", raw_root=FIXTURE_ROOT, processed_root=tmp_path, r_peaks="both")


def test_cli_prepare_writes_the_dataset(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    ok = runner.invoke(
        app, ["prepare", "mitdb", "--raw-dir", str(FIXTURE_ROOT), "--out-dir", str(tmp_path)]
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "mitdb" / "manifest.json").is_file()
    bad = runner.invoke(
        app, ["prepare", "mitdb", "--raw-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "ecg download mitdb" in bad.output


# --------------------------------------------------------------------------- the real mitdb
@pytest.fixture(scope="module")
def mitdb_dataset(shared_physionet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("processed")
    return prepare_dataset("mitdb", raw_root=shared_physionet, processed_root=out, workers=2)


def test_mitdb_class_counts_match_de_chazal(mitdb_dataset: Path, mitdb_dir: Path) -> None:
    m = load_dataset(mitdb_dataset).manifest
    counts = {s: m["splits"][s]["counts"] for s in SPLITS}
    # Windows pad at the edges, so every annotated beat is kept: DS2 exactly.
    assert {c: counts["test"][c] for c in DS2_COUNTS} == DS2_COUNTS
    # DS1 minus record 201 (excluded: the subject of DS2's 202), counted from its annotations.
    c201 = _aami_counts(mitdb_dir, "201")
    assert c201 == {"N": 1_635, "S": 128, "V": 198, "F": 2}
    for c, n in DS1_COUNTS.items():
        assert counts["train"][c] + counts["val"][c] == n - c201[c]
    assert counts["val"] == {"N": 7_701, "S": 294, "V": 536, "F": 19, "Q": 0}
    # Validation has every minority class; training keeps most of each.
    for c in ("S", "V", "F"):
        assert 0 < counts["val"][c] < counts["train"][c]
    assert m["splits"]["val"]["records"] == sorted(MITDB_VAL_RECORDS)
    assert m["splits"]["test"]["records"] == sorted(DS2_RECORDS)
    assert set(m["splits"]["train"]["records"]) == (
        set(DS1_RECORDS) - set(MITDB_VAL_RECORDS) - {"201"}
    )
    assert m["excluded"].keys() == {"paced", "same_subject_as_test"}
    assert m["n_items"] == sum(sum(c.values()) for c in counts.values())


def test_mitdb_no_patient_in_two_splits(mitdb_dataset: Path) -> None:
    ds = load_dataset(mitdb_dataset)
    _assert_patients_disjoint(ds)
    assert "201" not in ds.records() and "202" in ds.records("test")


def test_mitdb_train_serve_parity_on_real_records(mitdb_dataset: Path, mitdb_dir: Path) -> None:
    ds = load_dataset(mitdb_dataset)
    for record in ("114", "232"):  # 114 stores MLII second; 232 is DS2's S-beat record
        _assert_parity(ds, mitdb_dir, record)


def test_mitdb_on_detected_peaks(
    mitdb_dataset: Path, mitdb_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every annotated beat is an item or a counted miss; parity holds on detected peaks."""
    out = tmp_path_factory.mktemp("processed-detected")
    det = load_dataset(
        prepare_dataset("mitdb", raw_root=mitdb_dir.parents[1], processed_root=out,
                        workers=2, r_peaks="detected")
    )  # fmt: skip
    ann = load_dataset(mitdb_dataset).manifest["splits"]
    missed = det.manifest["detection"]["missed_reference_beats"]
    for s in SPLITS:
        for c in AAMI_CLASSES:
            assert det.manifest["splits"][s]["counts"][c] + missed[s][c] == ann[s]["counts"][c]
    n_missed = sum(sum(m.values()) for m in missed.values())
    assert 0 < n_missed < 0.01 * det.manifest["n_items"]  # the detector's Se is over 99%
    _assert_patients_disjoint(det)
    for record in ("114", "232"):
        _assert_parity(det, mitdb_dir, record)


def test_mitdb_partial_real_download(tmp_path: Path, mitdb_dir: Path) -> None:
    db = tmp_path / "raw" / "mitdb" / "1.0.0"
    db.mkdir(parents=True)
    for record in ("101", "118", "100", "102"):
        for ext in ("hea", "dat", "atr"):
            os.symlink(mitdb_dir / f"{record}.{ext}", db / f"{record}.{ext}")
    ds = load_dataset(prepare_dataset("mitdb", raw_root=tmp_path / "raw", processed_root=tmp_path))
    assert {s: ds.records(s) for s in SPLITS} == {
        "train": ["101"],
        "val": ["118"],
        "test": ["100"],
    }
    assert ds.manifest["excluded"]["not_downloaded"]["n_records"] == 40


# --------------------------------------------------------------------------- the real ptb-xl
@pytest.fixture(scope="module")
def ptbxl_dataset(shared_physionet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shared_physionet / "ptb-xl" / "1.0.1" / "ptbxl_database.csv").is_file():
        pytest.skip("no PTB-XL in the mirror")
    out = tmp_path_factory.mktemp("processed")
    return prepare_dataset("ptb-xl", raw_root=shared_physionet, processed_root=out, workers=2)


def _expected_ptbxl(ptbxl_dir: Path) -> tuple[pd.DataFrame, int]:
    """The records on disk with a superclass, and the count without, read straight from the table.

    An independent reading of ``ptbxl_database.csv`` / ``scp_statements.csv`` (diagnostic
    statements with likelihood > 0), so the test follows the mirror as it grows.
    """
    db = pd.read_csv(ptbxl_dir / "ptbxl_database.csv", index_col="ecg_id")
    scp = pd.read_csv(ptbxl_dir / "scp_statements.csv", index_col=0)
    diagnostic = scp[scp["diagnostic"] == 1]["diagnostic_class"]
    on_disk = db[[(ptbxl_dir / f"{name}.hea").is_file() for name in db["filename_lr"]]].copy()
    on_disk["superclasses"] = [
        {diagnostic[k] for k, v in ast.literal_eval(codes).items() if k in diagnostic and v > 0}
        for codes in on_disk["scp_codes"]
    ]
    kept = on_disk[on_disk["superclasses"].map(len) > 0]
    return kept, len(on_disk) - len(kept)


def test_ptbxl_labels_splits_and_counts(ptbxl_dataset: Path, ptbxl_dir: Path) -> None:
    ds = load_dataset(ptbxl_dataset)
    a, m = ds.arrays, ds.manifest
    kept, no_superclass = _expected_ptbxl(ptbxl_dir)
    n = len(kept)
    # This mirror (7,988 records at 100 Hz, its README): 108 without a superclass, 7,880 kept.
    assert n + no_superclass >= 7_988
    assert len(ds) == n
    assert m["excluded"]["no_superclass"]["n_records"] == no_superclass
    assert m["excluded"]["not_downloaded"]["n_records"] == 21_837 - (n + no_superclass)
    totals = {c: sum(m["splits"][s]["counts"][c] for s in SPLITS) for c in PTBXL_SUPERCLASSES}
    assert totals == {c: int(kept["superclasses"].map(lambda s, c=c: c in s).sum()) for c in totals}
    assert a["signals"].shape == (n, 1_000, 12) and a["signals"].dtype == np.float32
    assert a["labels"].shape == (n, 5) and set(np.unique(a["labels"])) == {0.0, 1.0}
    assert a["labels"].sum(axis=1).min() >= 1
    assert m["leads"] == ["I", "II", "III", "AVR", "AVL", "AVF", *[f"V{i}" for i in range(1, 7)]]
    assert m["input_shape"] == [1000, 12] and m["fs"] == 100.0
    # Folds 1-8 train, 9 validation, 10 test, with the table's fold sizes.
    for split, folds in (("train", range(1, 9)), ("val", [9]), ("test", [10])):
        assert set(a["fold"][a["split"] == split].tolist()) == set(folds)
        assert m["splits"][split]["n_items"] == int(kept["strat_fold"].isin(list(folds)).sum())
    # ecg_id 1 is {'NORM': 100, 'LVOLT': 0, 'SR': 0}: NORM only.
    i = int(np.flatnonzero(a["record"] == "1")[0])
    assert a["labels"][i].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert a["patient"][i] == "15709"
    # z-scored leads
    np.testing.assert_allclose(a["signals"][i].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(a["signals"][i].std(axis=0), 1.0, atol=1e-3)
    x, y = ds.inputs("test")
    assert x.shape[1:] == (1000, 12) and y.dtype == np.float32


def test_ptbxl_no_patient_in_two_splits(ptbxl_dataset: Path) -> None:
    _assert_patients_disjoint(load_dataset(ptbxl_dataset))


def test_ptbxl_partial_and_empty_download(tmp_path: Path, ptbxl_dir: Path) -> None:
    src = tmp_path / "raw" / "ptb-xl" / "1.0.1"
    (src / "records100" / "00000").mkdir(parents=True)
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        os.symlink(ptbxl_dir / name, src / name)
    with pytest.raises(UserError, match=r"none of the 21837 records.*ecg download ptb-xl"):
        prepare_dataset("ptb-xl", raw_root=tmp_path / "raw", processed_root=tmp_path)
    for ecg_id in (1, 2, 3, 17):  # 17 has no superclass
        for ext in ("hea", "dat"):
            name = f"{ecg_id:05d}_lr.{ext}"
            os.symlink(ptbxl_dir / "records100" / "00000" / name, src / "records100/00000" / name)
    ds = load_dataset(prepare_dataset("ptb-xl", raw_root=tmp_path / "raw", processed_root=tmp_path))
    assert ds.records() == ["1", "2", "3"]
    assert ds.manifest["excluded"]["no_superclass"]["records"] == ["17"]
    (src / "scp_statements.csv").unlink()
    with pytest.raises(UserError, match=r"scp_statements.csv not found"):
        prepare_dataset("ptb-xl", raw_root=tmp_path / "raw", processed_root=tmp_path)
