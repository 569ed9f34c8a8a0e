"""Tiny real datasets for the training and registry tests, built by the real ``prepare_dataset``.

A raw root is laid out like a PhysioNet download with symbolic links to a few records of the
shared mirror (nothing is copied), then :func:`pipeline.datasets.prepare_dataset` builds the
dataset exactly as ``ecg prepare`` does:

* mitdb: train 106 (V) and 209 (S), validation 223 (S, V, F; one of the default DS1 validation
  records), test 100 (DS2). About 9,000 beats.
* ptb-xl: ecg_id 1-100 (folds 1-8 train, 9 validation, 10 test), the full database table.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipeline.datasets import prepare_dataset

MITDB_TINY_RECORDS: tuple[str, ...] = ("106", "209", "223", "100")
PTBXL_TINY_IDS = range(1, 101)


def build_tiny_mitdb(shared: Path, root: Path) -> Path:
    """``root/processed/mitdb`` from :data:`MITDB_TINY_RECORDS`; returns ``root`` (the data dir)."""
    src = shared / "mitdb" / "1.0.0"
    raw = root / "raw" / "mitdb" / "1.0.0"
    raw.mkdir(parents=True, exist_ok=True)
    for rec in MITDB_TINY_RECORDS:
        for ext in ("hea", "dat", "atr"):
            (raw / f"{rec}.{ext}").symlink_to(src / f"{rec}.{ext}")
    prepare_dataset("mitdb", root / "raw", root / "processed", workers=1)
    return root


def ptbxl_ids_by_fold(shared: Path, n_train: int, n_val: int, n_test: int = 0) -> list[int]:
    """The first ``n`` on-disk records (ecg_id < 1000) of folds 1-8, 9 and 10, in that order."""
    table = shared / "ptb-xl" / "1.0.1"
    db = pd.read_csv(table / "ptbxl_database.csv", index_col="ecg_id")
    db = db[db.index < 1000]
    db = db[[(table / f"{f}.hea").is_file() for f in db["filename_lr"]]]
    fold = db["strat_fold"]
    return [
        *db.index[fold <= 8][:n_train],
        *db.index[fold == 9][:n_val],
        *db.index[fold == 10][:n_test],
    ]


def build_tiny_ptbxl(shared: Path, root: Path, ids: Iterable[int] = PTBXL_TINY_IDS) -> Path:
    """``root/processed/ptb-xl`` from the records ``ids`` (default 1-100); returns ``root``."""
    src = shared / "ptb-xl" / "1.0.1"
    raw = root / "raw" / "ptb-xl" / "1.0.1"
    (raw / "records100" / "00000").mkdir(parents=True, exist_ok=True)
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        (raw / name).symlink_to(src / name)
    for i in ids:
        for ext in ("hea", "dat"):
            rel = Path("records100") / "00000" / f"{i:05d}_lr.{ext}"
            (raw / rel).symlink_to(src / rel)
    prepare_dataset("ptb-xl", root / "raw", root / "processed", workers=1)
    return root


def copy_dataset(data_dir: Path, name: str, dest_root: Path) -> Path:
    """A private copy of ``data_dir/processed/<name>`` under ``dest_root`` (to damage safely)."""
    dest = dest_root / "processed" / name
    shutil.copytree(data_dir / "processed" / name, dest)
    return dest_root
