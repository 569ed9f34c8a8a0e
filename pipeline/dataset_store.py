"""Prepared datasets on disk: load and verify them, write them atomically.

A dataset directory holds ``arrays.npz`` and ``manifest.json`` (layout in
:mod:`pipeline.datasets`, which builds them). It is written into a temporary sibling directory
and swapped in by renaming, so an interrupted run never leaves a half-written dataset and the
previous one stays valid until the swap; :func:`load_dataset` checks completeness, dtypes,
lengths and the content hash, and names ``ecg prepare`` as the cure for anything wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.preprocessing import PreprocessConfig, assemble_beat_inputs, normalise_beats
from models.tasks import DATASETS, DatasetSpec, InputKind, dataset_spec
from pipeline.errors import UserError

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "Dataset",
    "DatasetSplits",
    "InputOptions",
    "Split",
    "content_sha256",
    "load_dataset",
    "write_atomically",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
_MANIFEST = "manifest.json"
_ARRAYS = "arrays.npz"
#: Arrays every dataset of an input kind holds, with their dtypes ("U": unicode strings).
_REQUIRED_ARRAYS: dict[InputKind, dict[str, str]] = {
    "beats": {
        "waves": "float32",
        "rr": "float32",
        "labels": "int64",
        "record": "U",
        "patient": "U",
        "sample": "int64",
        "split": "U",
    },
    "record": {
        "signals": "float32",
        "labels": "float32",
        "record": "U",
        "patient": "U",
        "split": "U",
    },
}


# =========================================================================== loading
@dataclass(frozen=True)
class InputOptions:
    """How model inputs are cut from a beat dataset's arrays (record datasets take them whole).

    Attributes
    ----------
    rr_features : tuple of str, optional
        The subset (and order) of the dataset's RR features fed to the model; None keeps all.
    beat_normalise : {"dataset", "zscore"}
        Keep the dataset's beat windows, or z-score each window (as serving's ``beat_windows``
        does when the model card says so).
    """

    rr_features: tuple[str, ...] | None = None
    beat_normalise: Literal["dataset", "zscore"] = "dataset"


@dataclass(frozen=True)
class Split:
    """Model inputs and targets of one split.

    Attributes
    ----------
    name : str
        ``"train"``, ``"val"`` or ``"test"``.
    x : np.ndarray
        float32 ``(n, T, C)`` (see :meth:`Dataset.inputs`).
    y : np.ndarray
        int64 ``(n,)`` class indices, or float32 ``(n, K)`` multi-hot.
    records : list of str
        Sorted record names of its items.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    records: list[str]


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset in memory.

    Attributes
    ----------
    path : Path
        The dataset directory.
    manifest : dict
        ``manifest.json``.
    arrays : dict of str to np.ndarray
        The contents of ``arrays.npz`` (see :mod:`pipeline.datasets` for keys, shapes, dtypes).
    """

    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return str(self.manifest["dataset"])

    @property
    def spec(self) -> DatasetSpec:
        """Its catalogue entry (task, input kind, default patch size)."""
        return dataset_spec(self.name)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing config the dataset was built with (serving must repeat it)."""
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def content_sha256(self) -> str:
        return str(self.manifest["content_sha256"])

    def __len__(self) -> int:
        return int(self.arrays["split"].shape[0])

    def mask(self, split: str | None = None) -> np.ndarray:
        """Boolean ``(n,)`` mask of one split's items (all items when ``split`` is None)."""
        if split is None:
            return np.ones(len(self), dtype=bool)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.arrays["split"] == split

    def inputs(
        self, where: str | np.ndarray | None = None, options: InputOptions | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs and targets of a split (a name, a boolean ``(n,)`` mask, None: all).

        Returns
        -------
        X : np.ndarray
            float32 ``(n, T, C)``: beats ``(n, w, 1 + f)``, the beat window then its RR channels
            (:func:`models.preprocessing.assemble_beat_inputs`); records ``(n, samples, leads)``
            (PTB-XL ``(n, 1000, 12)`` at 100 Hz).
        y : np.ndarray
            int64 ``(n,)`` class indices (beats) or float32 ``(n, K)`` multi-hot (records).
        """
        m = where if isinstance(where, np.ndarray) else self.mask(where)
        a, opts = self.arrays, options or InputOptions()
        if not self.spec.is_beats:
            return np.ascontiguousarray(a["signals"][m], dtype=np.float32), a["labels"][m]
        rr = a["rr"][m]
        if opts.rr_features is not None:
            rr = rr[:, self._rr_columns(opts.rr_features)]
        waves = a["waves"][m]
        if opts.beat_normalise == "zscore":
            waves = normalise_beats(waves, "zscore")  # what serving's beat_windows does
        return assemble_beat_inputs(waves, rr), a["labels"][m]

    def _rr_columns(self, wanted: tuple[str, ...]) -> list[int]:
        have = list(self.preprocess.rr_features)
        unknown = [f for f in wanted if f not in have]
        if unknown:
            raise UserError(
                f"RR features {unknown} are not in dataset {self.path} (it has {have}); "
                "re-prepare it with them or choose among these"
            )
        return [have.index(f) for f in wanted]

    def records(self, split: str | np.ndarray | None = None) -> list[str]:
        """Sorted record names in a split (a name, a boolean mask, or None: all)."""
        m = split if isinstance(split, np.ndarray) else self.mask(split)
        return sorted(set(self.arrays["record"][m].tolist()))

    def patients(self, split: str | None = None) -> list[str]:
        """Sorted patient ids in a split."""
        return sorted(set(self.arrays["patient"][self.mask(split)].tolist()))

    def splits(
        self, val_records: tuple[str, ...] | None = None, options: InputOptions | None = None
    ) -> DatasetSplits:
        """The train / validation / test splits a training run uses.

        Parameters
        ----------
        val_records : tuple of str, optional
            Beat datasets: training/validation records to validate on instead of the
            dataset's validation split (the others of the two train).
        options : InputOptions, optional
            How inputs are cut (default: as stored).

        Raises
        ------
        UserError
            Unknown validation records or RR features, or an empty train or validation split.
        """
        opts = options or InputOptions()
        if opts.rr_features is not None:
            self._rr_columns(opts.rr_features)  # fail now, not after the first epoch
        masks = {s: self.mask(s) for s in SPLITS}
        if val_records:
            records = self.arrays["record"]
            pool = masks["train"] | masks["val"]
            available = sorted(set(records[pool].tolist()))
            unknown = sorted(set(val_records) - set(available))
            if unknown:
                raise UserError(
                    f"--val-records {unknown} are not training/validation records of "
                    f"{self.path}; choose among {available}"
                )
            is_val = np.isin(records, list(val_records)) & pool
            masks["val"], masks["train"] = is_val, pool & ~is_val
        for s in ("train", "val"):
            if not masks[s].any():
                raise UserError(
                    f"dataset {self.path} has no {s} items; re-run `ecg prepare {self.name}`"
                )
        return DatasetSplits(self, masks, opts)


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset cut into a run's splits; inputs are built when asked for.

    Training asks for ``"train"`` and ``"val"`` at the start and for ``"test"`` once, at the end.

    Attributes
    ----------
    dataset : Dataset
    masks : dict of str to np.ndarray
        Boolean ``(n,)`` mask per split name.
    options : InputOptions
    """

    dataset: Dataset
    masks: dict[str, np.ndarray]
    options: InputOptions

    def split(self, name: str) -> Split:
        """Inputs, targets and records of split ``name``."""
        m = self.masks[name]
        x, y = self.dataset.inputs(m, self.options)
        return Split(name, x, y, self.dataset.records(m))

    def records(self) -> dict[str, list[str]]:
        """Sorted record names per split (without building any input)."""
        return {s: self.dataset.records(m) for s, m in self.masks.items()}

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing that turns raw ECG into these inputs (what the model card holds)."""
        pre = self.dataset.preprocess
        if self.options.rr_features is not None:
            pre = dataclasses.replace(pre, rr_features=tuple(self.options.rr_features))
        if self.options.beat_normalise == "zscore":
            pre = dataclasses.replace(pre, beat_normalise="zscore")
        return pre

    @property
    def n_signal_channels(self) -> int:
        """Leading input channels that carry the signal (beats: the waveform; records: all)."""
        if self.dataset.spec.is_beats:
            return 1
        return int(self.dataset.arrays["signals"].shape[2])


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))  # type: ignore[arg-type]
    return h.hexdigest()


def load_dataset(path: Path | str, *, verify: bool = True) -> Dataset:
    """Load a prepared dataset directory and check it is complete and unmodified.

    Parameters
    ----------
    path : Path or str
        ``<processed_root>/<name>``.
    verify : bool
        Recompute the content hash and compare it with the manifest (about 1 s per GB).

    Raises
    ------
    UserError
        The directory, manifest or arrays are missing, damaged, incomplete or do not match the
        manifest; the message says what and to re-run ``ecg prepare <name>``.
    """
    path = Path(path)
    if not path.is_dir():
        which = path.name if path.name in DATASETS else "|".join(DATASETS)
        raise UserError(f"dataset {path} does not exist; build it with `ecg prepare {which}`")
    manifest = _read_manifest(path)
    name = str(manifest["dataset"])
    try:
        with np.load(path / _ARRAYS, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise _damaged(path, name, f"{_ARRAYS} is missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _damaged(path, name, f"{_ARRAYS} is damaged ({type(err).__name__}: {err})") from None
    problem = _arrays_problem(arrays, manifest, verify)
    if problem:
        raise _damaged(path, name, problem)
    ds = Dataset(path=path, manifest=manifest, arrays=arrays)
    shape = _input_shape(ds)
    if shape != list(manifest.get("input_shape", [])):
        what = f"model input shape {shape} differs from the manifest's input_shape"
        raise _damaged(path, name, what)
    return ds


def _damaged(path: Path, name: str, what: str) -> UserError:
    return UserError(f"dataset {path}: {what}; re-run `ecg prepare {name}`")


def _read_manifest(path: Path) -> dict[str, Any]:
    """``manifest.json`` of a dataset of a known kind and format version."""
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except FileNotFoundError:
        raise _damaged(path, path.name, f"{_MANIFEST} is missing") from None
    except (OSError, ValueError) as err:
        raise _damaged(path, path.name, f"{_MANIFEST} is unreadable ({err})") from None
    if not isinstance(manifest, dict):
        raise _damaged(path, path.name, f"{_MANIFEST} is not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version")
        raise _damaged(path, path.name, f"format_version {version} is not {FORMAT_VERSION}")
    kind = manifest.get("dataset")
    if kind not in DATASETS:
        raise _damaged(path, path.name, f"unknown dataset kind {kind!r} in {_MANIFEST}")
    return manifest


def _arrays_problem(
    arrays: dict[str, np.ndarray], manifest: dict[str, Any], verify: bool
) -> str | None:
    """What is wrong with the arrays given the manifest (None: nothing)."""
    required = _REQUIRED_ARRAYS[DATASETS[str(manifest["dataset"])].input_kind]
    missing = [k for k in required if k not in arrays]
    if missing:
        return f"{_ARRAYS} lacks arrays {missing}"
    for key, kind in required.items():
        a = arrays[key]
        if not (a.dtype.kind == "U" if kind == "U" else a.dtype == np.dtype(kind)):
            return f"array {key!r} has dtype {a.dtype}, expected {kind}"
    n = manifest.get("n_items")
    lengths = {k: int(arrays[k].shape[0]) for k in required}
    if set(lengths.values()) != {n}:
        return f"array lengths {lengths} do not all equal n_items={n}"
    bad_splits = sorted(set(arrays["split"].tolist()) - set(SPLITS))
    if bad_splits:
        return f"unknown split names {bad_splits}"
    if verify:
        digest = content_sha256(arrays)
        if digest != manifest.get("content_sha256"):
            return (
                f"content hash {digest[:12]} does not match the manifest's "
                f"{str(manifest.get('content_sha256'))[:12]} (files changed or partly written)"
            )
    return None


def _input_shape(ds: Dataset) -> list[int]:
    if ds.spec.is_beats:
        return [int(ds.arrays["waves"].shape[1]), 1 + int(ds.arrays["rr"].shape[1])]
    return [int(ds.arrays["signals"].shape[1]), int(ds.arrays["signals"].shape[2])]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(root: Path, name: str) -> None:
    """Remove temp dirs left by killed runs (their pid is gone) for this dataset."""
    for p in root.glob(f".{name}.*-*"):
        m = re.match(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)-", p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(2))):
            logger.info("removing %s left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **arrays)  # type: ignore[arg-type]


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def write_atomically(
    root: Path, name: str, arrays: dict[str, np.ndarray], manifest: dict[str, Any]
) -> Path:
    """Write into ``.<name>.tmp-<pid>-*`` next to the target, then rename it into place."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root, name)
    target = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not secret
    old: Path | None = None
    try:
        _write_arrays(tmp / _ARRAYS, arrays)
        _write_manifest(tmp / _MANIFEST, manifest)
        _fsync_dir_files(tmp)
        if target.exists():
            # rename() cannot replace a non-empty directory: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=root))
            os.replace(target, old / name)
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old / name, target)
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_dir_files(directory: Path) -> None:
    for p in directory.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
