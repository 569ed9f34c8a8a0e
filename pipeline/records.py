"""Read WFDB records and annotations (PhysioNet's format) into plain arrays.

Signals come back as float32 ``(n_samples, n_leads)`` in millivolts with their sampling rate and
lead names; annotations as sample indices and symbols. Leads are picked by name, never by position:
MIT-BIH record 114 stores V5 first and MLII second.

Every failure the user can fix raises :class:`RecordError` (a :class:`~pipeline.errors.UserError`)
naming the record and what to do; :class:`RecordMissingError` when files are absent, so a dataset
build over a partial download can tell "not downloaded" from "damaged".
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

__all__ = [
    "MITDB_LEAD",
    "Annotations",
    "Record",
    "RecordError",
    "RecordMissingError",
    "read_annotations",
    "read_record",
]

logger = logging.getLogger(__name__)

#: The MIT-BIH lead every record but the paced 102 and 104 has (modified limb lead II).
MITDB_LEAD = "MLII"

# What wfdb raises on damaged headers, signal files and annotation files (measured: truncated
# .dat -> ValueError, garbage .hea -> HeaderSyntaxError(ValueError), empty .hea -> IndexError,
# damaged .atr -> ValueError).
_WFDB_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    EOFError,
    struct.error,
)

# Scale factors to millivolts for the units PhysioNet headers use.
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


class RecordError(UserError):
    """A WFDB record or annotation file is damaged or unusable; the message says which and why."""


class RecordMissingError(RecordError):
    """A WFDB file (header, signal or annotation) is not on disk."""


@dataclass(frozen=True)
class Record:
    """One WFDB record in memory.

    Attributes
    ----------
    name : str
        Record name (file stem, e.g. ``"100"`` or ``"00001_lr"``).
    signal : np.ndarray
        float32 ``(n_samples, n_leads)`` in mV at ``fs`` Hz.
    fs : float
        Sampling rate in Hz.
    leads : tuple of str
        Lead names (the header's ``sig_name``), in the column order of ``signal``.
    comments : tuple of str
        Header comment lines (age, sex, medications for MIT-BIH).
    """

    name: str
    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    comments: tuple[str, ...] = ()

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        """One lead by name, float32 ``(n_samples,)`` in mV.

        Raises
        ------
        RecordError
            If the record has no lead of that name.
        """
        if name not in self.leads:
            raise RecordError(f"record {self.name}: no lead {name!r}; it has {list(self.leads)}")
        return self.signal[:, self.leads.index(name)]


@dataclass(frozen=True)
class Annotations:
    """Annotations of one record.

    Attributes
    ----------
    sample : np.ndarray
        int64 ``(n,)`` sample indices at ``fs``, sorted.
    symbol : np.ndarray
        str ``(n,)`` annotation symbols (``"N"``, ``"V"``, ``"+"``, ...).
    fs : float
        Rate of ``sample``, Hz.
    """

    sample: np.ndarray
    symbol: np.ndarray
    fs: float

    def select(self, symbols: frozenset[str] | set[str]) -> Annotations:
        """Only the annotations whose symbol is in ``symbols``."""
        keep = np.isin(self.symbol, sorted(symbols))
        return Annotations(sample=self.sample[keep], symbol=self.symbol[keep], fs=self.fs)


def _stem(path: Path | str) -> Path:
    """``dir/100``, ``dir/100.hea`` -> ``dir/100``."""
    p = Path(path)
    return p.with_suffix("") if p.suffix == ".hea" else p


def read_record(path: Path | str, leads: list[str] | None = None) -> Record:
    """Read a WFDB record's signals in physical units.

    Parameters
    ----------
    path : Path or str
        The record without extension (``<dir>/100``); a ``.hea`` suffix is accepted.
    leads : list of str, optional
        Lead names to return, in this order (all leads when None).

    Returns
    -------
    Record
        ``signal`` float32 ``(n_samples, n_leads)`` in mV.

    Raises
    ------
    RecordMissingError
        The header or signal file is absent.
    RecordError
        A file is damaged, a lead is missing, the rate is not positive or the units are not volts.
    """
    import wfdb  # local import: heavy, only needed here

    stem = _stem(path)
    name = stem.name
    if not stem.with_suffix(".hea").is_file():
        raise RecordMissingError(
            f"record {name}: header {stem.with_suffix('.hea')} not found; "
            "download the database first (`ecg download <db>`)"
        )
    try:
        rec = wfdb.rdrecord(str(stem))
    except FileNotFoundError as err:
        raise RecordMissingError(
            f"record {name}: {err.filename or err} not found; the download is incomplete, "
            "re-run `ecg download <db>`"
        ) from err
    except _WFDB_ERRORS as err:
        raise RecordError(
            f"record {name}: cannot read {stem}: {type(err).__name__}: {err}; the files look "
            "damaged, re-run `ecg download <db>`"
        ) from err

    fs = float(rec.fs or 0)
    if not fs > 0:
        raise RecordError(f"record {name}: sampling frequency {rec.fs} Hz; expected > 0")
    if rec.p_signal is None or rec.p_signal.ndim != 2 or rec.p_signal.shape[0] == 0:
        raise RecordError(f"record {name}: no signal samples in {stem}")
    if rec.sig_len and rec.p_signal.shape[0] != rec.sig_len:
        raise RecordError(
            f"record {name}: {rec.p_signal.shape[0]} samples read, header says {rec.sig_len}; "
            "the signal file is truncated, re-run `ecg download <db>`"
        )
    names = tuple(str(s) for s in rec.sig_name)
    scale = np.ones(len(names), dtype=np.float64)
    for i, unit in enumerate(rec.units or ["mV"] * len(names)):
        key = str(unit).strip().lower()
        if key not in _TO_MV:
            raise RecordError(f"record {name}: lead {names[i]} in unit {unit!r}; expected mV or uV")
        scale[i] = _TO_MV[key]
    signal = (rec.p_signal * scale).astype(np.float32)

    if leads is not None:
        missing = [lead for lead in leads if lead not in names]
        if missing:
            raise RecordError(f"record {name}: no lead(s) {missing}; it has {list(names)}")
        signal = signal[:, [names.index(lead) for lead in leads]]
        names = tuple(leads)
    return Record(
        name=name,
        signal=np.ascontiguousarray(signal),
        fs=fs,
        leads=names,
        comments=tuple(rec.comments or ()),
    )


def read_annotations(path: Path | str, extension: str = "atr") -> Annotations:
    """Read a WFDB annotation file (``<record>.<extension>``).

    Parameters
    ----------
    path : Path or str
        The record without extension.
    extension : str
        Annotator, ``"atr"`` for the reference beat labels.

    Returns
    -------
    Annotations
        Sorted sample indices (int64) and symbols.

    Raises
    ------
    RecordMissingError
        The annotation file is absent.
    RecordError
        It is damaged or holds no annotations.
    """
    import wfdb

    stem = _stem(path)
    name = stem.name
    file = stem.with_name(f"{name}.{extension}")
    if not file.is_file():
        raise RecordMissingError(
            f"record {name}: annotation file {file} not found; the download is incomplete, "
            "re-run `ecg download <db>`"
        )
    try:
        ann = wfdb.rdann(str(stem), extension)
    except _WFDB_ERRORS as err:
        raise RecordError(
            f"record {name}: cannot read {file}: {type(err).__name__}: {err}; the file looks "
            "damaged, re-run `ecg download <db>`"
        ) from err
    sample = np.asarray(ann.sample, dtype=np.int64)
    symbol = np.asarray(ann.symbol if ann.symbol is not None else [], dtype=str)
    if sample.shape[0] == 0 or sample.shape != symbol.shape:
        raise RecordError(f"record {name}: {file} holds no annotations; re-run `ecg download <db>`")
    order = np.argsort(sample, kind="stable")
    fs = float(ann.fs) if ann.fs else _header_fs(stem)
    return Annotations(sample=sample[order], symbol=symbol[order], fs=fs)


def _header_fs(stem: Path) -> float:
    """The record's rate from its header (annotation files often do not store it); NaN if none."""
    import wfdb

    try:
        return float(wfdb.rdheader(str(stem)).fs)
    except OSError:
        return float("nan")
    except _WFDB_ERRORS:
        return float("nan")


def write_excerpt(
    src_dir: Path, record: str, start: int, length: int, out_dir: Path, out_name: str | None = None
) -> Path:
    """Copy ``length`` samples of a WFDB record from ``start``, with its beat annotations.

    The digital samples are copied unchanged (same format, gain and baseline), so the excerpt
    reads back to exactly the original millivolts; annotations inside the excerpt keep their
    symbols, subtypes, channels, numbers and notes, shifted to the excerpt's first sample.
    Used to build the test fixtures and the web page's bundled examples.

    Parameters
    ----------
    src_dir : Path
        Directory holding ``<record>.hea/.dat/.atr``.
    record : str
    start, length : int
        First sample and number of samples (at the record's own rate).
    out_dir : Path
        Where ``<out_name>.hea/.dat/.atr`` are written.
    out_name : str, optional
        Name of the excerpt record; defaults to ``record``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    import wfdb

    name = out_name or record
    rec = wfdb.rdrecord(
        str(src_dir / record), sampfrom=start, sampto=start + length, physical=False
    )
    wfdb.wrsamp(
        name,
        fs=rec.fs,
        units=rec.units,
        sig_name=rec.sig_name,
        d_signal=rec.d_signal,
        fmt=rec.fmt,
        adc_gain=rec.adc_gain,
        baseline=rec.baseline,
        comments=rec.comments,
        write_dir=str(out_dir),
    )
    ann = wfdb.rdann(str(src_dir / record), "atr", sampfrom=start, sampto=start + length - 1)
    keep = (ann.sample >= start) & (ann.sample < start + length)
    wfdb.wrann(
        name,
        "atr",
        np.asarray(ann.sample[keep] - start, dtype=np.int64),
        symbol=list(np.asarray(ann.symbol)[keep]),
        subtype=np.asarray(ann.subtype)[keep],
        chan=np.asarray(ann.chan)[keep],
        num=np.asarray(ann.num)[keep],
        aux_note=list(np.asarray(ann.aux_note, dtype=object)[keep]),
        fs=rec.fs,
        write_dir=str(out_dir),
    )
    return out_dir
