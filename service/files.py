"""Recorder files in: predictions for uploaded WFDB / EDF / CSV files and raw binary bodies.

``POST /predict/{arrhythmia,heart-disease}/file`` take a multipart upload (field ``files``, one or
more files: a WFDB record's ``.hea`` + ``.dat`` (+ ``.atr``), one EDF/EDF+ file or one CSV);
``POST /predict/{arrhythmia,heart-disease}/binary`` take an ``application/octet-stream`` body of
little-endian float32 or int16 frames with ``fs``, ``leads`` and ``gain`` as query parameters.
The file is decoded by :mod:`service.formats`; this module picks the lead(s) the served model reads
by name, cuts the record into the model's segments and answers with the JSON endpoints' response
models plus what was read (:mod:`service.file_schemas`).

Arrhythmia: the lead named like the model's (MLII; else II; else the record's first lead, with a
warning naming the one used, or the ``lead`` asked for). A record longer than
``ECG_SERVICE_MAX_SIGNAL_SECONDS`` is classified in consecutive segments of at most that length,
each read with a few seconds of context on both sides, so that no beat is lost or doubled at a
segment border. Annotated beats (``.atr``) are used instead of detection when uploaded.
Heart disease: the model's leads by name (case-insensitive; ``ECG``/``EKG``/``Lead`` prefixes
ignored), one answer per consecutive model-length window (10 s for PTB-XL).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, Final, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from models.predictor import ArrhythmiaPredictor, BeatPredictions, HeartDiseasePredictor
from models.record_predictor import RecordPredictor
from models.segment import Segment
from service.arrhythmia_answer import (
    BeatArrays,
    beats_out,
    merge_quality,
    no_beats_warning,
    nonfinite_outputs,
    summary,
)
from service.batcher import predict_held
from service.deps import (
    ArrhythmiaModelDep,
    BatcherDep,
    HeartDiseaseModelDep,
    InferenceGateDep,
    SettingsDep,
    require_api_key,
)
from service.file_schemas import (
    FileArrhythmiaResponse,
    FileHeartDiseaseResponse,
    HeartDiseaseWindow,
    RecordInfo,
)
from service.formats import (
    EcgRecord,
    RecordFormatError,
    UploadedFile,
    parse_binary,
    parse_upload,
)
from service.heart_disease_answer import Sex, record_answer
from service.registry_watch import LoadedModel
from service.schemas import ErrorResponse, ModelRef

__all__ = ["MAX_FILE_SECONDS", "files_router"]

logger = logging.getLogger(__name__)

#: Longest record accepted from a file: one hour (a full 30-min MIT-BIH record fits).
MAX_FILE_SECONDS: Final = 3600.0
#: Context read on both sides of an arrhythmia segment of a long record, seconds.
_CONTEXT_S: Final = 5.0
#: A heart-disease window must cover at least this share of the model's length.
_MIN_WINDOW_FRACTION: Final = 0.9
#: Largest polyphase up/down factor accepted for resampling to the model's rate.
_MAX_RESAMPLE_FACTOR: Final = 2000
_LEAD_PREFIX = re.compile(r"^(ECG|EKG|LEAD)[\s_:-]*", re.IGNORECASE)
#: Leads that stand in for the model's lead, in order of preference.
_EQUIVALENT_LEADS: Final[dict[str, tuple[str, ...]]] = {"MLII": ("II", "ML2")}

FileFormat = Literal["auto", "wfdb", "edf", "csv"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The multipart body cannot be parsed."},
    401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key (when one is set)."},
    413: {"model": ErrorResponse, "description": "Request body larger than the configured limit."},
    415: {"model": ErrorResponse, "description": "Unknown file format or wrong content type."},
    422: {"model": ErrorResponse, "description": "The file is malformed; `detail` says how."},
    503: {"model": ErrorResponse, "description": "The model is not loaded."},
}

files_router = APIRouter(
    prefix="/predict",
    tags=["files"],
    dependencies=[Depends(require_api_key)],
    responses=_ERRORS,
)

_BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            }
        },
        "description": "Little-endian float32 or int16 frames, row-major (n_samples, n_leads).",
    }
}


# --------------------------------------------------------------------------- helpers
def _unprocessable(message: str) -> HTTPException:
    return HTTPException(422, message)


def _format_error(err: RecordFormatError) -> HTTPException:
    return HTTPException(err.status_code, str(err))


def normalise_lead(name: str) -> str:
    """Upper-case lead name without ``ECG``/``EKG``/``Lead`` prefixes or spaces (aVR -> AVR)."""
    return _LEAD_PREFIX.sub("", name.strip()).replace(" ", "").upper()


def _check_rate(fs: float, fs_model: float) -> None:
    ratio = Fraction(fs_model).limit_denominator(1000) / Fraction(fs).limit_denominator(1000)
    if max(ratio.numerator, ratio.denominator) > _MAX_RESAMPLE_FACTOR:
        raise _unprocessable(
            f"wrong fs: {fs:g} Hz cannot be resampled cheaply to the model's {fs_model:g} Hz "
            f"(ratio {ratio}); use a whole number of Hz"
        )


def _model_ref(loaded: LoadedModel) -> ModelRef:
    return ModelRef(
        name=loaded.name, version=loaded.version, alias=loaded.alias, run_id=loaded.run_id
    )


def _record_info(record: EcgRecord) -> RecordInfo:
    return RecordInfo(
        format=record.format,
        name=record.name,
        fs=record.fs,
        leads=list(record.leads),
        n_samples=record.n_samples,
        duration_s=record.duration_s,
        annotated_beats=None if record.r_peaks is None else len(record.r_peaks),
    )


def _read_uploads(files: list[UploadFile]) -> list[UploadedFile]:
    return [UploadedFile(name=f.filename or "", data=f.file.read()) for f in files]


def _finite(probabilities: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(probabilities)):
        raise _unprocessable("the model produced non-finite outputs for this record")
    return probabilities


# --------------------------------------------------------------------------- arrhythmia
def choose_lead(record: EcgRecord, model_lead: str, asked: str | None) -> tuple[int, list[str]]:
    """Column of the lead the beats are read from, and warnings saying how it was chosen.

    Parameters
    ----------
    record : EcgRecord
    model_lead : str
        The lead the model was trained on (``"MLII"``).
    asked : str, optional
        The client's choice (matched like the names: case and prefixes ignored).
    """
    names = [normalise_lead(n) for n in record.leads]
    if asked is not None:
        if normalise_lead(asked) not in names:
            raise _unprocessable(
                f"missing lead: {asked!r} is not in the record's leads {list(record.leads)}"
            )
        i = names.index(normalise_lead(asked))
        warn = [] if names[i] == normalise_lead(model_lead) else [
            f"the model was trained on {model_lead}; read lead {record.leads[i]!r} as asked"
        ]  # fmt: skip
        return i, warn
    wanted = normalise_lead(model_lead)
    if wanted in names:
        return names.index(wanted), []
    for alt in _EQUIVALENT_LEADS.get(wanted, ()):
        if alt in names:
            i = names.index(alt)
            return i, [f"no {model_lead} lead in the record: used lead {record.leads[i]!r}"]
    return 0, [
        f"no {model_lead} lead in the record: used its first lead {record.leads[0]!r} "
        "(pass lead=... to choose another)"
    ]


def _segments(n: int, fs: float, seg_s: float) -> list[tuple[int, int, int, int]]:
    """Sample ranges ``(lo, hi, own_lo, own_hi)``: read ``[lo, hi)``, keep its own beats."""
    seg = max(1, int(seg_s * fs))
    ctx = round(_CONTEXT_S * fs)
    if n <= seg:
        return [(0, n, 0, n)]
    own = max(1, seg - 2 * ctx)
    out = []
    for start in range(0, n, own):
        stop = min(n, start + own)
        out.append((max(0, start - ctx), min(n, stop + ctx), start, stop))
    return out


@dataclass
class _ArrhythmiaPlan:
    """What the arrhythmia model reads of a record: its lead, cut into overlapping segments."""

    predictor: ArrhythmiaPredictor
    column: int
    warnings: list[str]
    parts: list[tuple[int, int, int, int]]  # (lo, hi, own_lo, own_hi) samples
    segments: list[Segment]


def _arrhythmia_plan(
    loaded: LoadedModel, record: EcgRecord, lead: str | None, max_segment_s: float
) -> _ArrhythmiaPlan:
    """The lead and segments of ``record`` for the served arrhythmia model (422 saying why not)."""
    predictor = loaded.predictor
    if not isinstance(predictor, ArrhythmiaPredictor):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "wrong model kind loaded")
    cfg = predictor.card.preprocess
    column, warnings = choose_lead(record, predictor.card.leads[0], lead)
    signal = record.signal[:, column]
    fs = record.fs
    min_s = cfg.beat_before_s + cfg.beat_after_s
    if record.n_samples < math.ceil(min_s * fs - 1e-9):
        raise _unprocessable(
            f"record too short: {record.duration_s:.3f} s; at least {min_s:.2f} s is needed"
        )
    _check_rate(fs, cfg.fs_target)
    parts = _segments(record.n_samples, fs, max_segment_s)
    segments = []
    try:
        for lo, hi, _, _ in parts:
            peaks = None
            if record.r_peaks is not None:
                inside = record.r_peaks[(record.r_peaks >= lo) & (record.r_peaks < hi)]
                peaks = inside - lo
            segments.append(Segment.single_lead(signal[lo:hi], fs, record.leads[column], peaks))
    except ValueError as err:
        raise _unprocessable(str(err)) from err
    return _ArrhythmiaPlan(predictor, column, warnings, parts, segments)


def _arrhythmia_answer(
    loaded: LoadedModel,
    record: EcgRecord,
    plan: _ArrhythmiaPlan,
    predictions: Sequence[BeatPredictions],
    include_signal: bool,
) -> FileArrhythmiaResponse:
    """The beats of the whole record from its segments' predictions (each beat from the
    segment that owns it), the record's quality verdict, and the record's facts."""
    classes = plan.predictor.card.classes
    kept, part_quality = [], []
    for (lo, _, own_lo, own_hi), pred in zip(plan.parts, predictions, strict=True):
        if nonfinite_outputs(pred):
            raise _unprocessable("the model produced non-finite outputs for this record")
        absolute = np.asarray(pred.r_peaks, dtype=np.int64) + lo
        kept.append(BeatArrays.of(pred, (absolute >= own_lo) & (absolute < own_hi), offset=lo))
        part_quality.append((pred.strip_verdict, pred.strip_reasons))
    beats = beats_out(BeatArrays.concat(kept, len(classes)), classes, record.fs)
    quality = merge_quality(part_quality, beats)
    warnings = [*plan.warnings, *no_beats_warning(quality, beats, "record")]
    signal = record.signal[:, plan.column]
    return FileArrhythmiaResponse(
        n_samples=record.n_samples,
        duration_s=record.duration_s,
        r_peaks_source="detected" if record.r_peaks is None else "given",
        quality=quality,
        beats=beats,
        summary=summary(beats, classes),
        warnings=[*record.warnings, *warnings],
        model=_model_ref(loaded),
        record=_record_info(record),
        lead=record.leads[plan.column],
        signal=np.round(signal.astype(np.float64), 4).tolist() if include_signal else None,
    )


# --------------------------------------------------------------------------- heart disease
def _windows(record: EcgRecord, window_s: float) -> list[tuple[int, int]]:
    """``(start, end)`` samples of the record's consecutive model-length windows (422: none)."""
    window = round(window_s * record.fs)
    spans = [(s, min(record.n_samples, s + window)) for s in range(0, record.n_samples, window)]
    spans = [(s, e) for s, e in spans if e - s >= _MIN_WINDOW_FRACTION * window]
    if not spans:
        raise _unprocessable(
            f"record too short: {record.duration_s:.2f} s; this model reads {window_s:g} s "
            f"(at least {_MIN_WINDOW_FRACTION * window_s:g} s)"
        )
    return spans


def _record_model_file_answer(
    loaded: LoadedModel,
    predictor: RecordPredictor,
    record: EcgRecord,
    gate: Any,
    age: float | None,
    sex: Sex | None,
) -> FileHeartDiseaseResponse:
    """The record model's answer per window, from whichever of the 12 leads the record holds."""
    card = predictor.card
    model_leads = {normalise_lead(lead): lead for lead in card.leads}
    names = [normalise_lead(n) for n in record.leads]
    columns = [i for i, n in enumerate(names) if n in model_leads and n not in names[:i]]
    if not columns:
        raise _unprocessable(
            f"no usable lead: this model reads any of {list(card.leads)}; the record has "
            f"{list(record.leads)}"
        )
    leads = [model_leads[names[i]] for i in columns]
    _check_rate(record.fs, card.preprocess.fs_target)
    window_s = card.input_shape[0] / card.preprocess.fs_target
    windows = []
    for s, e in _windows(record, window_s):
        try:
            fields = record_answer(
                predictor, record.signal[s:e, columns], record.fs, leads, gate, age=age, sex=sex
            )
        except ValueError as err:
            raise _unprocessable(str(err)) from err
        windows.append(HeartDiseaseWindow(**fields, start_s=s / record.fs, end_s=e / record.fs))
    warnings = list(record.warnings)
    unused = [n for n, low in zip(record.leads, names, strict=True) if low not in model_leads]
    if unused:
        warnings.append(f"leads {unused} are not used by this model")
    if len(windows) > 1:
        warnings.append(
            f"the record holds {len(windows)} windows of {window_s:g} s: the top-level answer is "
            "the first; `windows` has each"
        )
    first = windows[0]
    return FileHeartDiseaseResponse(
        **first.model_dump(exclude={"warnings", "start_s", "end_s"}),
        warnings=[*warnings, *first.warnings],
        model=_model_ref(loaded),
        record=_record_info(record),
        windows=windows,
    )


def _heart_disease_answer(
    loaded: LoadedModel,
    record: EcgRecord,
    gate: Any,
    age: float | None = None,
    sex: Sex | None = None,
) -> FileHeartDiseaseResponse:
    predictor = loaded.predictor
    if isinstance(predictor, RecordPredictor):
        return _record_model_file_answer(loaded, predictor, record, gate, age, sex)
    if not isinstance(predictor, HeartDiseasePredictor):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "wrong model kind loaded")
    card = predictor.card
    names = [normalise_lead(n) for n in record.leads]
    missing = [lead for lead in card.leads if normalise_lead(lead) not in names]
    if missing:
        raise _unprocessable(
            f"missing leads {missing}: this model reads {list(card.leads)}; the record has "
            f"{list(record.leads)}"
        )
    columns = [names.index(normalise_lead(lead)) for lead in card.leads]
    signal = record.signal[:, columns]
    fs = record.fs
    _check_rate(fs, card.preprocess.fs_target)
    window_s = card.input_shape[0] / card.preprocess.fs_target
    window = round(window_s * fs)
    starts = list(range(0, record.n_samples, window))
    starts = [
        s
        for s in starts
        if (min(record.n_samples, s + window) - s) >= _MIN_WINDOW_FRACTION * window
    ]
    if not starts:
        raise _unprocessable(
            f"record too short: {record.duration_s:.2f} s; this model reads {window_s:g} s "
            f"(at least {_MIN_WINDOW_FRACTION * window_s:g} s)"
        )
    try:
        inputs = [Segment(signal[s : s + window], fs, card.leads) for s in starts]
        with gate:
            probs = _finite(predictor.predict_many(inputs))
    except ValueError as err:
        raise _unprocessable(str(err)) from err
    disease = predictor.heart_disease_probability(probs)
    unused = [
        n
        for n, low in zip(record.leads, names, strict=True)
        if low not in {normalise_lead(x) for x in card.leads}
    ]
    warnings = list(record.warnings)
    if unused:
        warnings.append(f"leads {unused} are not used by this model")
    windows = []
    for s, row, p in zip(starts, probs, disease, strict=True):
        end = min(record.n_samples, s + window)
        windows.append(
            HeartDiseaseWindow(
                probabilities=dict(zip(card.classes, row.tolist(), strict=True)),
                heart_disease_probability=float(p),
                labels=[c for c, v in zip(card.classes, row, strict=True) if v >= 0.5],
                warnings=[]
                if end - s == window
                else [f"window shorter than {window_s:g} s: padded with its last value"],
                start_s=s / fs,
                end_s=end / fs,
            )
        )
    first = windows[0]
    if len(windows) > 1:
        warnings.append(
            f"the record holds {len(windows)} windows of {window_s:g} s: the top-level answer is "
            "the first; `windows` has each"
        )
    return FileHeartDiseaseResponse(
        probabilities=first.probabilities,
        heart_disease_probability=first.heart_disease_probability,
        labels=first.labels,
        warnings=[*warnings, *first.warnings],
        model=_model_ref(loaded),
        record=_record_info(record),
        windows=windows,
    )


# --------------------------------------------------------------------------- endpoints
def _decode_upload(files: list[UploadFile], fmt: str, fs: float | None) -> EcgRecord:
    try:
        return parse_upload(_read_uploads(files), fmt, max_seconds=MAX_FILE_SECONDS, fs=fs)
    except RecordFormatError as err:
        raise _format_error(err) from err


async def _decode_binary(
    request: Request, dtype: str, fs: float, leads: str, gain: float | None
) -> EcgRecord:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/octet-stream":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"expected Content-Type: application/octet-stream, got {media or 'none'!r}",
        )
    data = await request.body()
    try:
        return parse_binary(  # vectorised: milliseconds even at the body limit, so inline
            data,
            dtype=dtype,
            fs=fs,
            leads=leads.split(","),
            gain=gain,
            max_seconds=MAX_FILE_SECONDS,
        )
    except RecordFormatError as err:
        raise _format_error(err) from err


UploadFiles = Annotated[
    list[UploadFile],
    File(description="A WFDB record (.hea + .dat, optional .atr), one EDF/EDF+ file or one CSV."),
]
AgeQuery = Annotated[
    float | None, Query(ge=0, le=130, description="Patient age, years (used with sex).")
]
SexQuery = Annotated[Sex | None, Query(description="male or female (used with age).")]
FormatQuery = Annotated[
    FileFormat, Query(alias="format", description="File format; auto detects it.")
]
FsQuery = Annotated[
    float | None,
    Query(gt=0, le=100_000, description="Rate of a CSV without a time column, Hz."),
]
LeadQuery = Annotated[
    str | None,
    Query(max_length=32, description="Lead to classify (default: the model's, MLII)."),
]
SignalQuery = Annotated[
    bool, Query(description="Also return the classified lead's samples (for drawing).")
]
BinFs = Annotated[float, Query(gt=0, le=100_000, description="Sampling rate, Hz (100-1000).")]
BinLeads = Annotated[
    str,
    Query(min_length=1, max_length=400, description="Comma-separated lead names, column order."),
]
BinDtype = Annotated[Literal["float32", "int16"], Query(description="Sample type, little-endian.")]
BinGain = Annotated[
    float | None,
    Query(gt=0, le=1e9, description="Units per mV (default 1 for float32, 200 for int16)."),
]


@files_router.post("/arrhythmia/file", response_model=FileArrhythmiaResponse)
def predict_arrhythmia_file(
    files: UploadFiles,
    loaded: ArrhythmiaModelDep,
    settings: SettingsDep,
    gate: InferenceGateDep,
    request: Request,
    fmt: FormatQuery = "auto",
    fs: FsQuery = None,
    lead: LeadQuery = None,
    include_signal: SignalQuery = False,
) -> FileArrhythmiaResponse:
    """Every beat of an uploaded record (WFDB, EDF/EDF+, CSV), read from its MLII lead."""
    record = _decode_upload(files, fmt, fs)
    request.state.n_samples = record.n_samples
    plan = _arrhythmia_plan(loaded, record, lead, settings.max_signal_seconds)
    try:
        predictions = predict_held(gate, plan.predictor, plan.segments)
    except ValueError as err:
        raise _unprocessable(str(err)) from err
    return _arrhythmia_answer(loaded, record, plan, predictions, include_signal)


@files_router.post("/heart-disease/file", response_model=FileHeartDiseaseResponse)
def predict_heart_disease_file(
    files: UploadFiles,
    loaded: HeartDiseaseModelDep,
    gate: InferenceGateDep,
    request: Request,
    fmt: FormatQuery = "auto",
    fs: FsQuery = None,
    age: AgeQuery = None,
    sex: SexQuery = None,
) -> FileHeartDiseaseResponse:
    """Superclass probabilities of an uploaded record, per model-length window.

    The record model reads whichever of the 12 standard leads the file holds (``leads_used``;
    ``reduced_leads`` when fewer: less certain) and the optional ``age`` and ``sex``.
    """
    record = _decode_upload(files, fmt, fs)
    request.state.n_samples = record.n_samples
    return _heart_disease_answer(loaded, record, gate, age, sex)


@files_router.post(
    "/arrhythmia/binary", response_model=FileArrhythmiaResponse, openapi_extra=_BINARY_BODY
)
async def predict_arrhythmia_binary(
    request: Request,
    loaded: ArrhythmiaModelDep,
    settings: SettingsDep,
    batcher: BatcherDep,
    fs: BinFs,
    leads: BinLeads = "MLII",
    dtype: BinDtype = "float32",
    gain: BinGain = None,
    lead: LeadQuery = None,
    include_signal: SignalQuery = False,
) -> FileArrhythmiaResponse:
    """Every beat of a raw little-endian float32/int16 body (``fs``, ``leads``, ``gain`` given)."""
    record = await _decode_binary(request, dtype, fs, leads, gain)
    request.state.n_samples = record.n_samples
    plan = _arrhythmia_plan(loaded, record, lead, settings.max_signal_seconds)
    try:  # its segments join whatever other requests arrive now (service/batcher.py)
        predictions = await batcher.predict_all(plan.predictor, plan.segments)
    except ValueError as err:
        raise _unprocessable(str(err)) from err
    return _arrhythmia_answer(loaded, record, plan, predictions, include_signal)


@files_router.post(
    "/heart-disease/binary", response_model=FileHeartDiseaseResponse, openapi_extra=_BINARY_BODY
)
async def predict_heart_disease_binary(
    request: Request,
    loaded: HeartDiseaseModelDep,
    gate: InferenceGateDep,
    fs: BinFs,
    leads: BinLeads,
    dtype: BinDtype = "float32",
    gain: BinGain = None,
    age: AgeQuery = None,
    sex: SexQuery = None,
) -> FileHeartDiseaseResponse:
    """Superclass probabilities of a raw multi-lead body (``fs``, ``leads``, ``gain`` given)."""
    record = await _decode_binary(request, dtype, fs, leads, gain)
    request.state.n_samples = record.n_samples
    return await run_in_threadpool(_heart_disease_answer, loaded, record, gate, age, sex)
