"""Recorder files in: WFDB, EDF/EDF+, CSV and raw binary ECG, turned into one :class:`EcgRecord`.

Every parser checks what it reads against what the file declares (sizes, lengths, rates, units)
and raises :class:`RecordFormatError` with a message naming the file and what is wrong; the HTTP
layer (:mod:`service.files`) turns it into a 4xx. Nothing here knows about models: picking leads,
cutting segments and predicting happen in :mod:`service.files`.

Formats
-------
WFDB
    A ``.hea`` header with its ``.dat`` signal file(s) (formats 8, 16, 24, 32, 61, 80, 160, 212,
    310, 311) and optionally a beat annotation file (``.atr``, ``.qrs``, ``.ann``) whose beat
    positions are returned as ``r_peaks``. Read with ``wfdb`` from a private temporary directory.
EDF / EDF+
    Read with ``edfio``. Ordinary signals with a voltage unit (V, mV, uV) at the most common rate
    are kept; annotation channels and signals at other rates or in other units are dropped (a
    warning says which).
CSV
    A header row of lead names (quotes allowed), an optional units row (``mV``/``uV``/``V``), an
    optional first time column (``time``, ``t``, ``time_s``, ``seconds``, ``elapsed time``, in
    seconds) from which the rate is derived; otherwise the rate must be given. Delimiter: comma,
    semicolon or tab.
Binary
    Little-endian ``float32`` or ``int16`` frames, one value per lead, row-major
    ``(n_samples, n_leads)``; rate, lead names and gain (units per mV) are given separately.
"""

from __future__ import annotations

import io
import logging
import math
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np

from models.labels import WFDB_BEAT_SYMBOLS
from service.wfdb_annotations import read_mit_annotations

__all__ = [
    "BINARY_DTYPES",
    "FORMATS",
    "EcgRecord",
    "RecordFormatError",
    "UploadedFile",
    "detect_format",
    "parse_binary",
    "parse_csv",
    "parse_edf",
    "parse_upload",
    "parse_wfdb",
]

logger = logging.getLogger(__name__)

RecordFormat = Literal["wfdb", "edf", "csv", "binary"]
FORMATS: Final = ("wfdb", "edf", "csv")
BINARY_DTYPES: Final[dict[str, np.dtype]] = {"float32": np.dtype("<f4"), "int16": np.dtype("<i2")}

#: Accepted sampling rates, Hz (the service's range).
FS_MIN_HZ: Final = 100.0
FS_MAX_HZ: Final = 1000.0
#: Samples beyond +-1 V are not ECG in millivolts (wrong unit or gain, most likely).
MAX_ABS_MV: Final = 1000.0
MAX_LEADS: Final = 64

#: Bits per sample of the WFDB signal formats this reader accepts.
_WFDB_BITS: Final[dict[str, float]] = {
    "8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16, "212": 12,
    "310": 32 / 3, "311": 32 / 3,
}  # fmt: skip
_ANNOTATION_EXTENSIONS: Final = ("atr", "qrs", "ann")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,100}$")
_TO_MV: Final[dict[str, float]] = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}
_TIME_COLUMNS: Final = {"time", "t", "time_s", "times", "seconds", "sec", "s", "elapsed time"}
_EDF_MAGIC: Final = b"0       "


class RecordFormatError(ValueError):
    """A file that cannot be read as ECG; ``status_code`` is the HTTP status to answer with.

    Parameters
    ----------
    message : str
        What is wrong, naming the file (shown to the client as is).
    status_code : int
        422 for a malformed or unusable file, 415 for an unknown format.
    """

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file: its client-side name (may be empty) and its bytes."""

    name: str
    data: bytes

    @property
    def extension(self) -> str:
        """Lower-case extension without the dot (``"hea"``), or ``""``."""
        suffix = Path(self.name).suffix
        return suffix[1:].lower() if suffix else ""


@dataclass(frozen=True)
class EcgRecord:
    """A decoded ECG record.

    Attributes
    ----------
    signal : np.ndarray
        float32 ``(n_samples, n_leads)`` in mV at ``fs``.
    fs : float
        Sampling rate, Hz (100-1000).
    leads : tuple of str
        Lead names in column order (as the file names them, stripped).
    format : {"wfdb", "edf", "csv", "binary"}
    r_peaks : np.ndarray or None
        int64 ``(n_beats,)`` annotated beat positions (WFDB annotation file), else None.
    name : str or None
        Record name (WFDB) or file name.
    warnings : tuple of str
        What was dropped or assumed while reading.
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    format: RecordFormat
    r_peaks: np.ndarray | None = None
    name: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


# --------------------------------------------------------------------------- shared checks
def _finish(
    signal: np.ndarray,
    fs: float,
    leads: Sequence[str],
    fmt: RecordFormat,
    *,
    max_seconds: float,
    where: str,
    r_peaks: np.ndarray | None = None,
    name: str | None = None,
    warnings: Sequence[str] = (),
) -> EcgRecord:
    """Check rate, shape, values and length; return the record (float32 mV)."""
    if not math.isfinite(fs) or not FS_MIN_HZ <= fs <= FS_MAX_HZ:
        raise _rate_error(where, fs)
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != len(leads) or x.shape[1] == 0:
        raise RecordFormatError(
            f"{where}: expected (n_samples, {len(leads)}) values, got {x.shape}"
        )
    if x.shape[0] == 0:
        raise RecordFormatError(f"{where}: the record has no samples")
    duration = x.shape[0] / fs
    if duration > max_seconds:
        raise RecordFormatError(
            f"{where}: record too long: {duration:.1f} s ({x.shape[0]} samples at {fs:g} Hz); "
            f"at most {max_seconds:g} s is accepted: send an excerpt"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        col = int(np.nonzero(bad.any(axis=0))[0][0])
        raise RecordFormatError(
            f"{where}: {int(bad.sum())} missing or non-finite samples (first in lead "
            f"{leads[col]!r} at sample {int(np.nonzero(bad[:, col])[0][0])}); "
            "send a stretch without gaps"
        )
    peak = float(np.abs(x).max())
    if peak > MAX_ABS_MV:
        raise RecordFormatError(
            f"{where}: samples reach {peak:.4g} mV; ECG in millivolts stays within "
            f"+-{MAX_ABS_MV:g} mV: check the unit or the gain"
        )
    peaks = None
    if r_peaks is not None:
        peaks = np.asarray(r_peaks, dtype=np.int64)
        peaks = np.unique(peaks[(peaks >= 0) & (peaks < x.shape[0])])
    return EcgRecord(
        signal=np.ascontiguousarray(x),
        fs=float(fs),
        leads=tuple(str(lead).strip() for lead in leads),
        format=fmt,
        r_peaks=peaks,
        name=name,
        warnings=tuple(warnings),
    )


def _rate_error(where: str, fs: float) -> RecordFormatError:
    return RecordFormatError(
        f"{where}: wrong fs: sampling rate {fs:g} Hz is outside the accepted "
        f"{FS_MIN_HZ:g}-{FS_MAX_HZ:g} Hz"
    )


def _unit_scale(unit: str, where: str) -> float | None:
    """Factor from ``unit`` to mV; None when it is not a voltage."""
    key = unit.strip().lower().replace(" ", "")
    if key in _TO_MV:
        return _TO_MV[key]
    if key in ("", "nu"):  # not given: WFDB's default unit is mV
        return 1.0
    return None


# --------------------------------------------------------------------------- format detection
def detect_format(files: Sequence[UploadedFile]) -> str:
    """``"wfdb"``, ``"edf"`` or ``"csv"`` from the file names and first bytes.

    Raises
    ------
    RecordFormatError
        415 when no format fits.
    """
    if not files:
        raise RecordFormatError("no file was uploaded")
    exts = {f.extension for f in files}
    if "hea" in exts:
        return "wfdb"
    if any(f.data[:8] == _EDF_MAGIC for f in files) or exts & {"edf", "rec"}:
        return "edf"
    if exts & {"dat"}:
        raise RecordFormatError(
            "a WFDB .dat file needs its .hea header: upload both (and the .atr if you have it)",
            415,
        )
    if len(files) == 1 and (
        files[0].extension in ("csv", "tsv", "txt") or _looks_like_csv(files[0])
    ):
        return "csv"
    names = ", ".join(repr(f.name) for f in files)
    raise RecordFormatError(
        f"unknown format for {names}: expected a WFDB record (.hea + .dat, optional .atr), "
        "an EDF/EDF+ file or a CSV with a header of lead names",
        415,
    )


def _looks_like_csv(file: UploadedFile) -> bool:
    head = file.data[:4096]
    if b"\x00" in head:
        return False
    try:
        first = head.decode("utf-8").splitlines()[0]
    except (UnicodeDecodeError, IndexError):
        return False
    return any(d in first for d in ",;\t")


def parse_upload(
    files: Sequence[UploadedFile],
    fmt: str = "auto",
    *,
    max_seconds: float,
    fs: float | None = None,
) -> EcgRecord:
    """Decode uploaded files in format ``fmt`` (``"auto"`` detects it).

    Parameters
    ----------
    files : sequence of UploadedFile
    fmt : {"auto", "wfdb", "edf", "csv"}
    max_seconds : float
        Longest accepted record.
    fs : float, optional
        Sampling rate of a CSV without a time column, Hz (ignored by WFDB and EDF, which carry
        their own).
    """
    kind = detect_format(files) if fmt == "auto" else fmt
    if kind == "wfdb":
        return parse_wfdb(files, max_seconds=max_seconds)
    if len(files) != 1:
        raise RecordFormatError(f"a {kind.upper()} record is one file; got {len(files)} files")
    if kind == "edf":
        return parse_edf(files[0], max_seconds=max_seconds)
    if kind == "csv":
        return parse_csv(files[0], fs=fs, max_seconds=max_seconds)
    raise RecordFormatError(f"unknown format {fmt!r}; expected auto, wfdb, edf or csv", 415)


# --------------------------------------------------------------------------- WFDB
def parse_wfdb(files: Sequence[UploadedFile], *, max_seconds: float) -> EcgRecord:
    """A WFDB record from its ``.hea``, ``.dat`` file(s) and optional beat annotations.

    The header must be single-segment with one sample per frame; every ``.dat`` file it names
    must be uploaded (a single uploaded ``.dat`` is used for a single named one whatever its
    name) and hold exactly the bytes the header declares.
    """
    import wfdb

    headers = [f for f in files if f.extension == "hea"]
    if len(headers) != 1:
        raise RecordFormatError(f"a WFDB record needs exactly one .hea file; got {len(headers)}")
    header_file = headers[0]
    where = header_file.name or "header"
    try:
        text = header_file.data.decode("ascii")
    except UnicodeDecodeError as err:
        raise RecordFormatError(f"{where}: not a WFDB header (not ASCII text)") from err
    record_line = next(
        (ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), ""
    )
    record_name = record_line.split()[0] if record_line.split() else ""
    if "/" in record_name:
        raise RecordFormatError(f"{where}: multi-segment WFDB records are not supported")
    if not _SAFE_NAME.match(record_name) or record_name in (".", ".."):
        raise RecordFormatError(
            f"{where}: not a WFDB header (bad record line {record_line[:60]!r})"
        )
    dats = [f for f in files if f.extension not in ("hea", *_ANNOTATION_EXTENSIONS)]
    annotations = [f for f in files if f.extension in _ANNOTATION_EXTENSIONS]
    if len(annotations) > 1:
        raise RecordFormatError(
            f"upload at most one beat annotation file (.atr); got {[a.name for a in annotations]}"
        )
    with tempfile.TemporaryDirectory(prefix="ecg-upload-") as tmp:
        root = Path(tmp)
        (root / f"{record_name}.hea").write_bytes(header_file.data)
        try:
            header = wfdb.rdheader(str(root / record_name))
        except Exception as err:  # wfdb raises many kinds on bad text
            raise RecordFormatError(f"{where}: not a valid WFDB header: {err}") from err
        _check_wfdb_header(header, where)
        duration = header.sig_len / float(header.fs)
        if duration > max_seconds:
            raise RecordFormatError(
                f"{where}: record too long: {duration:.1f} s ({header.sig_len} samples at "
                f"{header.fs:g} Hz); at most {max_seconds:g} s is accepted: send an excerpt"
            )
        _place_dat_files(header, dats, root, where)
        try:
            rec = wfdb.rdrecord(str(root / record_name), physical=True, return_res=32)
        except Exception as err:
            raise RecordFormatError(
                f"{record_name}: the signal file cannot be read: {err}"
            ) from err
        peaks = None
        if annotations:
            peaks = _annotated_beats(annotations[0], int(header.sig_len))
    signal = np.asarray(rec.p_signal, dtype=np.float64)
    scales = [_unit_scale(u or "", where) for u in (rec.units or [""] * rec.n_sig)]
    if any(s is None for s in scales):
        raise RecordFormatError(f"{where}: signal units {rec.units} are not all voltages")
    signal = signal * np.asarray(scales, dtype=np.float64)[None, :]
    return _finish(
        signal,
        float(rec.fs),
        [str(n) for n in rec.sig_name],
        "wfdb",
        max_seconds=max_seconds,
        where=record_name,
        r_peaks=peaks,
        name=record_name,
    )


def _annotated_beats(ann_file: UploadedFile, sig_len: int) -> np.ndarray:
    """Beat positions (WFDB beat symbols only) of an uploaded MIT-format annotation file."""
    try:
        samples, symbols = read_mit_annotations(ann_file.data)
    except ValueError as err:
        raise RecordFormatError(
            f"{ann_file.name}: not a readable WFDB annotation file: {err}"
        ) from err
    keep = [i for i, sym in enumerate(symbols) if sym in WFDB_BEAT_SYMBOLS]
    peaks = samples[keep]
    if len(peaks) and (peaks.max() >= sig_len or peaks.min() < 0):
        raise RecordFormatError(
            f"{ann_file.name}: beat annotations run to sample {int(peaks.max())}, past "
            f"the record's {sig_len} samples (annotations of another record?)"
        )
    return peaks


def _check_wfdb_header(header: object, where: str) -> None:
    n_sig = int(getattr(header, "n_sig", 0) or 0)
    if getattr(header, "n_seg", None):
        raise RecordFormatError(f"{where}: multi-segment WFDB records are not supported")
    if not 1 <= n_sig <= MAX_LEADS:
        raise RecordFormatError(f"{where}: the header declares {n_sig} signals; 1-{MAX_LEADS}")
    fs = float(getattr(header, "fs", 0) or 0)
    if not FS_MIN_HZ <= fs <= FS_MAX_HZ:
        raise _rate_error(where, fs)
    if not getattr(header, "sig_len", None):
        raise RecordFormatError(f"{where}: the header does not give the number of samples")
    fmts = list(getattr(header, "fmt", None) or [])
    unknown = sorted({str(f) for f in fmts if str(f) not in _WFDB_BITS})
    if unknown or len(fmts) != n_sig:
        raise RecordFormatError(
            f"{where}: WFDB signal format(s) {unknown or fmts} not supported; "
            f"supported: {', '.join(_WFDB_BITS)}"
        )
    spf = [int(s or 1) for s in (getattr(header, "samps_per_frame", None) or [1] * n_sig)]
    if any(s != 1 for s in spf):
        raise RecordFormatError(f"{where}: multi-frequency records (samples per frame > 1)")
    for name in getattr(header, "file_name", None) or []:
        if not _SAFE_NAME.match(str(name)) or name in ("-", "..", "."):
            raise RecordFormatError(f"{where}: unsupported signal file name {name!r}")


def _place_dat_files(header: object, dats: Sequence[UploadedFile], root: Path, where: str) -> None:
    """Write each signal file the header names into ``root``, checking its size."""
    file_names: list[str] = [str(n) for n in getattr(header, "file_name")]  # noqa: B009
    fmts: list[str] = [str(f) for f in getattr(header, "fmt")]  # noqa: B009
    offsets = [int(o or 0) for o in (getattr(header, "byte_offset", None) or [0] * len(fmts))]
    sig_len = int(getattr(header, "sig_len"))  # noqa: B009
    wanted = list(dict.fromkeys(file_names))
    by_name = {Path(d.name).name: d for d in dats}
    for name in wanted:
        upload = by_name.get(name)
        if upload is None and len(wanted) == 1 and len(dats) == 1:
            upload = dats[0]
        if upload is None:
            raise RecordFormatError(
                f"{where}: the header reads signal file {name!r}, which was not uploaded "
                f"(got {[d.name for d in dats] or 'no .dat file'})"
            )
        idx = [i for i, n in enumerate(file_names) if n == name]
        bits = sum(_WFDB_BITS[fmts[i]] for i in idx)
        expected = offsets[idx[0]] + math.ceil(sig_len * bits / 8 - 1e-9)
        size = len(upload.data)
        declared = (
            f"the header declares {sig_len} samples x {len(idx)} signals in format "
            f"{'/'.join(sorted({fmts[i] for i in idx}))} = {expected} bytes"
        )
        if size < expected:
            raise RecordFormatError(
                f"truncated .dat: {upload.name or name} has {size} bytes; {declared}"
            )
        if size > expected + 4:  # formats 212/310/311 may pad the last frame
            raise RecordFormatError(
                f"header/data mismatch: {upload.name or name} has {size} bytes but {declared} "
                "(is the .hea from another record?)"
            )
        (root / name).write_bytes(upload.data)


# --------------------------------------------------------------------------- EDF
def _edf_layout(data: bytes, where: str) -> None:
    """Check an EDF file's size against its header (edfio only warns on a short file)."""
    if len(data) < 256:
        raise RecordFormatError(f"{where}: not an EDF file (shorter than its 256-byte header)")
    try:
        header_bytes = int(data[184:192].decode("ascii").strip())
        n_records = int(data[236:244].decode("ascii").strip())
        ns = int(data[252:256].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as err:
        raise RecordFormatError(f"{where}: not an EDF file (unreadable header fields)") from err
    if not 1 <= ns <= 512 or header_bytes != 256 * (ns + 1) or len(data) < header_bytes:
        raise RecordFormatError(
            f"{where}: EDF header inconsistent ({ns} signals, {header_bytes} header bytes, "
            f"file of {len(data)} bytes)"
        )
    start = 256 + ns * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
    try:
        per_record = [
            int(data[start + 8 * i : start + 8 * i + 8].decode("ascii").strip()) for i in range(ns)
        ]
    except (UnicodeDecodeError, ValueError) as err:
        raise RecordFormatError(f"{where}: EDF header has unreadable samples-per-record") from err
    record_bytes = 2 * sum(per_record)
    if record_bytes <= 0:
        raise RecordFormatError(f"{where}: EDF header declares empty data records")
    have = len(data) - header_bytes
    if n_records < 0:  # -1: unknown while recording; edfio derives it
        return
    expected = n_records * record_bytes
    if have < expected:
        raise RecordFormatError(
            f"truncated EDF: {where} has {have} data bytes; the header declares {n_records} "
            f"records x {record_bytes} bytes = {expected}"
        )
    if have > expected:
        raise RecordFormatError(
            f"header/data mismatch: {where} has {have} data bytes but the header declares "
            f"{n_records} records x {record_bytes} bytes = {expected}"
        )


def parse_edf(file: UploadedFile, *, max_seconds: float) -> EcgRecord:
    """An EDF or EDF+ (continuous) file: its voltage signals at the most common rate."""
    import edfio

    where = file.name or "EDF file"
    _edf_layout(file.data, where)
    try:
        edf = edfio.read_edf(file.data)
        signals = list(edf.signals)
    except Exception as err:  # edfio raises ValueError and friends on malformed headers
        raise RecordFormatError(f"{where}: not a valid EDF/EDF+ file: {err}") from err
    if not signals:
        raise RecordFormatError(f"{where}: the EDF file has no signals (annotations only?)")
    warnings: list[str] = []
    volt = []
    for s in signals:
        scale = _unit_scale(s.physical_dimension, where)
        if scale is None:
            warnings.append(
                f"signal {s.label!r} dropped: unit {s.physical_dimension!r} is not a voltage"
            )
        else:
            volt.append((s, scale))
    if not volt:
        raise RecordFormatError(f"{where}: no signal is in a voltage unit (mV, uV or V)")
    rates = Counter(float(s.sampling_frequency) for s, _ in volt)
    fs = rates.most_common(1)[0][0]
    kept = [(s, k) for s, k in volt if float(s.sampling_frequency) == fs]
    dropped = [
        f"{s.label} ({s.sampling_frequency:g} Hz)"
        for s, _ in volt
        if float(s.sampling_frequency) != fs
    ]
    if dropped:
        warnings.append(f"signals at other rates dropped: {', '.join(dropped)}")
    if not FS_MIN_HZ <= fs <= FS_MAX_HZ:
        raise _rate_error(where, fs)
    if edf.duration > max_seconds:
        raise RecordFormatError(
            f"{where}: record too long: {edf.duration:.1f} s; at most {max_seconds:g} s is "
            "accepted: send an excerpt"
        )
    try:
        columns = [np.asarray(s.data, dtype=np.float64) * k for s, k in kept]
    except Exception as err:
        raise RecordFormatError(f"{where}: EDF data cannot be decoded: {err}") from err
    n = min(len(c) for c in columns)
    leads = [s.label.strip() or f"signal{i}" for i, (s, _) in enumerate(kept)]
    return _finish(
        np.stack([c[:n] for c in columns], axis=1),
        fs,
        leads,
        "edf",
        max_seconds=max_seconds,
        where=where,
        name=file.name or None,
        warnings=warnings,
    )


# --------------------------------------------------------------------------- CSV
def _cell(text: str) -> str:
    return text.strip().strip("'\"").strip()


def parse_csv(file: UploadedFile, *, fs: float | None, max_seconds: float) -> EcgRecord:
    """A CSV (or TSV / semicolon) file with a header row of lead names.

    An optional second row of units (mV, uV, V) scales the columns; an optional first column
    named like a time (``time``, ``t``, ``time_s``, ``seconds``, ``elapsed time``) in seconds gives
    the rate, which must then agree with ``fs`` when both are given.
    """
    import pandas as pd

    where = file.name or "CSV file"
    try:
        text = file.data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RecordFormatError(f"{where}: a CSV file must be UTF-8 text") from err
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise RecordFormatError(f"{where}: empty CSV: the first row must name the leads")
    first = lines[0]
    delimiter = max(",;\t", key=first.count)
    header = [_cell(c) for c in first.split(delimiter)]
    if any(_is_number(c) for c in header):
        raise RecordFormatError(
            f"{where}: the first row must be a header of lead names (e.g. MLII,V5), "
            f"got {first[:80]!r}"
        )
    if len(set(h.lower() for h in header)) != len(header) or any(not h for h in header):
        raise RecordFormatError(f"{where}: empty or duplicate column names in the header {header}")
    skip = 1
    scales = [1.0] * len(header)
    if len(lines) > 1:
        second = [_cell(c) for c in lines[1].split(delimiter)]
        if second and not any(_is_number(c) for c in second if c):
            if len(second) != len(header):
                raise RecordFormatError(
                    f"{where}: row 2 has {len(second)} cells, the header {len(header)}"
                )
            skip = 2
            for i, unit in enumerate(second):
                scale = _unit_scale(unit, where)
                if scale is not None:
                    scales[i] = scale
                elif not (i == 0 and header[0].lower() in _TIME_COLUMNS):
                    raise RecordFormatError(
                        f"{where}: column {header[i]!r} has unit {unit!r}, not a voltage"
                    )
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            header=None,
            skiprows=skip,
            dtype=np.float64,
            engine="c",
            skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError) as err:
        raise RecordFormatError(
            f"{where}: CSV values must be numbers, one row per sample: {err}"
        ) from err
    if frame.shape[1] != len(header):
        raise RecordFormatError(
            f"{where}: header/data mismatch: the header names {len(header)} columns, rows have "
            f"{frame.shape[1]}"
        )
    values = frame.to_numpy(dtype=np.float64)
    if values.shape[0] == 0:
        raise RecordFormatError(f"{where}: the CSV has a header but no samples")
    leads: list[str] = header
    warnings: list[str] = []
    if header[0].lower() in _TIME_COLUMNS:
        t = values[:, 0]
        steps = np.diff(t)
        if len(steps) == 0 or not np.all(np.isfinite(steps)) or np.any(steps <= 0):
            raise RecordFormatError(f"{where}: the time column must increase from row to row")
        fs_time = 1.0 / float(np.median(steps))
        if np.max(np.abs(steps - 1.0 / fs_time)) > 0.01 / fs_time + 1e-6:
            raise RecordFormatError(f"{where}: the time column is not evenly spaced")
        fs_time = round(fs_time * 2) / 2  # the service's rates are multiples of 0.5 Hz
        if fs is not None and abs(fs - fs_time) > 0.01 * fs:
            raise RecordFormatError(
                f"{where}: wrong fs: the time column says {fs_time:g} Hz, the request fs={fs:g} Hz"
            )
        fs = fs_time
        values, leads, scales = values[:, 1:], header[1:], scales[1:]
        if not leads:
            raise RecordFormatError(f"{where}: the CSV has a time column but no lead column")
    if fs is None:
        raise RecordFormatError(
            f"{where}: the sampling rate is missing: give fs (Hz) or a first column named time "
            "(seconds)"
        )
    return _finish(
        values * np.asarray(scales)[None, :],
        fs,
        leads,
        "csv",
        max_seconds=max_seconds,
        where=where,
        name=file.name or None,
        warnings=warnings,
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- binary
def parse_binary(
    data: bytes,
    *,
    dtype: str,
    fs: float,
    leads: Sequence[str],
    gain: float | None,
    max_seconds: float,
) -> EcgRecord:
    """Little-endian ``(n_samples, n_leads)`` frames: float32 (mV unless ``gain``) or int16.

    Parameters
    ----------
    data : bytes
        The request body.
    dtype : {"float32", "int16"}
    fs : float
        Sampling rate, Hz.
    leads : sequence of str
        Lead names, one per column.
    gain : float, optional
        Units per mV: values are divided by it (default 1 for float32, 200 for int16, WFDB's
        default ADC gain).
    """
    where = "binary body"
    if dtype not in BINARY_DTYPES:
        raise RecordFormatError(f"dtype must be one of {list(BINARY_DTYPES)}, got {dtype!r}")
    names = [name.strip() for name in leads if name.strip()]
    if not names or len(names) > MAX_LEADS:
        raise RecordFormatError(
            f"give 1-{MAX_LEADS} lead names (leads=I,II,...), got {list(leads)}"
        )
    if len({n.lower() for n in names}) != len(names):
        raise RecordFormatError(f"duplicate lead names in {names}")
    scale = gain if gain is not None else (200.0 if dtype == "int16" else 1.0)
    if not math.isfinite(scale) or scale <= 0:
        raise RecordFormatError(f"gain must be > 0 units per mV, got {gain}")
    np_dtype = BINARY_DTYPES[dtype]
    frame = np_dtype.itemsize * len(names)
    if not data:
        raise RecordFormatError(f"{where}: empty body")
    if len(data) % frame:
        raise RecordFormatError(
            f"{where}: {len(data)} bytes is not a whole number of {dtype} frames of "
            f"{len(names)} leads ({frame} bytes each): truncated body or wrong leads/dtype"
        )
    if not math.isfinite(fs) or not FS_MIN_HZ <= fs <= FS_MAX_HZ:
        raise _rate_error(where, fs)
    if len(data) // frame / fs > max_seconds:
        raise RecordFormatError(
            f"{where}: record too long: {len(data) // frame / fs:.1f} s; at most {max_seconds:g} s "
            "is accepted: send an excerpt"
        )
    values = np.frombuffer(data, dtype=np_dtype).reshape(-1, len(names)).astype(np.float64)
    return _finish(values / scale, fs, names, "binary", max_seconds=max_seconds, where=where)
