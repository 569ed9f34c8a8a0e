"""HTTP endpoints: predictions, health/readiness, model information and reload.

Prediction endpoints are plain ``def`` functions: FastAPI runs them in its threadpool, so the
CPU-bound preprocessing and forward pass never block the event loop. A request body becomes a
:class:`models.segment.Segment` (which checks itself); what the loaded model needs of it (beat
window, leads, rate) is checked by the predictor; this module only adds the deployment's limits
(longest signal, largest batch) and turns every :class:`~models.segment.SegmentError` into a 422.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from models.predictor import ArrhythmiaPredictor, BeatPredictions, HeartDiseasePredictor
from models.record_predictor import RecordPredictor
from models.segment import Segment, SegmentError
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
    HolderDep,
    InferenceGateDep,
    SettingsDep,
    require_api_key,
    require_json,
)
from service.fast_json import FastJSONRoute
from service.heart_disease_answer import record_answer
from service.inference import Gate, run_inference
from service.registry_watch import LoadedModel, ModelHolder
from service.schemas import (
    ArrhythmiaBatchRequest,
    ArrhythmiaBatchResponse,
    ArrhythmiaRequest,
    ArrhythmiaResponse,
    ArrhythmiaResult,
    ErrorResponse,
    HealthResponse,
    HeartDiseaseBatchRequest,
    HeartDiseaseBatchResponse,
    HeartDiseaseRequest,
    HeartDiseaseResponse,
    HeartDiseaseResult,
    ModelInfo,
    ModelRef,
    ModelsResponse,
    ModelStatus,
    ReadyResponse,
    ReloadResponse,
    UnavailableModel,
)
from service.settings import ServiceSettings

__all__ = ["admin_router", "ops_router", "predict_router"]

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Body cannot be decoded (not UTF-8 JSON)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key (when one is set)."},
    413: {"model": ErrorResponse, "description": "Request body larger than the configured limit."},
    415: {"model": ErrorResponse, "description": "Body is not declared as JSON."},
    422: {"model": ErrorResponse, "description": "The request is malformed; `detail` says how."},
    503: {"model": ErrorResponse, "description": "The model is not loaded."},
}

predict_router = APIRouter(
    prefix="/predict",
    tags=["predict"],
    route_class=FastJSONRoute,
    dependencies=[Depends(require_api_key), Depends(require_json)],
    responses=_ERRORS,
)
admin_router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_api_key)],
    responses={401: _ERRORS[401], 422: _ERRORS[422]},
)
ops_router = APIRouter(tags=["operations"])


# --------------------------------------------------------------------------- checks
def _unprocessable(message: str) -> HTTPException:
    return HTTPException(422, message)  # Unprocessable Content (its name varies by Starlette)


def _where(batch_key: str | None, index: int | None) -> str:
    """``segments[1]: `` for an item of a batch request; nothing for a single one."""
    return "" if batch_key is None or index is None else f"{batch_key}[{index}]: "


def _segment(
    signal: Any,
    fs: float,
    leads: Sequence[str],
    r_peaks: Sequence[int] | None,
    settings: ServiceSettings,
    where: str,
) -> Segment:
    """The checked :class:`Segment` of a request body; 422 saying what is wrong."""
    try:
        segment = Segment(
            np.asarray(signal, dtype=np.float32),
            fs,
            tuple(leads),
            None if r_peaks is None else np.asarray(r_peaks),
        )
    except SegmentError as err:
        raise _unprocessable(f"{where}{err}") from err
    if segment.duration_s > settings.max_signal_seconds:
        raise _unprocessable(
            f"{where}signal is {segment.duration_s:.1f} s ({segment.n_samples} samples at "
            f"{segment.fs} Hz); at most {settings.max_signal_seconds:g} s is accepted: split it "
            "into several requests or segments"
        )
    return segment


def _check_batch_size(n: int, what: str, settings: ServiceSettings) -> None:
    if n > settings.max_batch_items:
        raise _unprocessable(f"{n} {what}; at most {settings.max_batch_items} per request")


def _finite(probabilities: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(probabilities)):
        raise _unprocessable("the model produced non-finite outputs for this signal")
    return probabilities


def _model_ref(loaded: LoadedModel) -> ModelRef:
    return ModelRef(
        name=loaded.name, version=loaded.version, alias=loaded.alias, run_id=loaded.run_id
    )


# --------------------------------------------------------------------------- arrhythmia
def _arrhythmia_inputs(
    loaded: LoadedModel,
    requests: list[ArrhythmiaRequest],
    settings: ServiceSettings,
    key: str | None,
) -> tuple[ArrhythmiaPredictor, list[Segment]]:
    """The served arrhythmia predictor and the checked segments of the request(s)."""
    predictor = loaded.predictor
    if not isinstance(predictor, ArrhythmiaPredictor):  # guarded by the holder; keeps mypy sure
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "wrong model kind loaded")
    lead = predictor.card.leads[:1]
    segments = [
        _segment(r.signal, r.fs, lead, r.r_peaks, settings, _where(key, i))
        for i, r in enumerate(requests)
    ]
    return predictor, segments


def _arrhythmia_results(
    predictor: ArrhythmiaPredictor,
    segments: list[Segment],
    predictions: Sequence[BeatPredictions],
) -> list[ArrhythmiaResult]:
    classes = predictor.card.classes
    results = []
    for segment, pred in zip(segments, predictions, strict=True):
        if nonfinite_outputs(pred):
            raise _unprocessable("the model produced non-finite outputs for this signal")
        beats = beats_out(BeatArrays.of(pred), classes, segment.fs)
        quality = merge_quality([(pred.strip_verdict, pred.strip_reasons)], beats)
        results.append(
            ArrhythmiaResult(
                n_samples=segment.n_samples,
                duration_s=segment.duration_s,
                r_peaks_source="detected" if segment.r_peaks is None else "given",
                quality=quality,
                beats=beats,
                summary=summary(beats, classes),
                warnings=no_beats_warning(quality, beats, "segment"),
            )
        )
    return results


@predict_router.post("/arrhythmia", response_model=ArrhythmiaResponse)
async def predict_arrhythmia(
    body: ArrhythmiaRequest,
    loaded: ArrhythmiaModelDep,
    settings: SettingsDep,
    batcher: BatcherDep,
    request: Request,
) -> ArrhythmiaResponse:
    """Judge the signal quality of one single-lead segment and classify each readable beat.

    Unreadable beats (and every beat of an unreadable segment) answer ``quality: unreadable``
    with a null label and null probabilities and the reasons; the segment's verdict is in
    ``quality``. Classes are the served model's (see ``GET /models``). Segments sent at the same
    time by several clients share one forward pass (:mod:`service.batcher`).
    """
    request.state.n_samples = len(body.signal)
    predictor, segments = _arrhythmia_inputs(loaded, [body], settings, None)
    try:
        prediction = await batcher.predict(predictor, segments[0])
    except ValueError as err:  # a SegmentError or a preprocessing error
        raise _unprocessable(str(err)) from err
    (result,) = _arrhythmia_results(predictor, segments, [prediction])
    return ArrhythmiaResponse.model_construct(**dict(result), model=_model_ref(loaded))


@predict_router.post("/arrhythmia/batch", response_model=ArrhythmiaBatchResponse)
async def predict_arrhythmia_batch(
    body: ArrhythmiaBatchRequest,
    loaded: ArrhythmiaModelDep,
    settings: SettingsDep,
    gate: InferenceGateDep,
    request: Request,
) -> ArrhythmiaBatchResponse:
    """Several segments (possibly at different rates) through one forward pass."""
    request.state.n_samples = sum(len(s.signal) for s in body.segments)
    _check_batch_size(len(body.segments), "segments", settings)
    key = "segments"
    predictor, segments = _arrhythmia_inputs(loaded, body.segments, settings, key)
    try:
        predictions = await run_inference(
            lambda held: predict_held(held, predictor, segments),
            request.state.n_samples,
            settings,
            gate,
        )
    except ValueError as err:  # SegmentError (with the item's index) or a preprocessing error
        raise _unprocessable(f"{_where(key, getattr(err, 'index', None))}{err}") from err
    results = _arrhythmia_results(predictor, segments, predictions)
    return ArrhythmiaBatchResponse(model=_model_ref(loaded), results=results)


# --------------------------------------------------------------------------- heart disease
def _record_warnings(segment: Segment, predictor: HeartDiseasePredictor) -> list[str]:
    """What the model leaves out of a record, or pads: said in the answer."""
    window_s = predictor.card.window_s
    warnings = []
    unused = segment.unused_leads(predictor.card.leads)
    if unused:
        warnings.append(f"leads {unused} are not used by this model")
    if segment.duration_s > window_s + 1e-9:
        warnings.append(f"the model reads the first {window_s:g} s; the rest was ignored")
    elif segment.duration_s < window_s - 1e-9:
        warnings.append(f"record shorter than {window_s:g} s: padded with its last value")
    return warnings


def _record_model_result(
    predictor: RecordPredictor,
    body: HeartDiseaseRequest,
    settings: ServiceSettings,
    gate: Gate,
    where: str,
) -> HeartDiseaseResult:
    """The record model's answer for any lead subset (and age, sex); 422 saying what is wrong."""
    segment = _segment(body.signal, body.fs, body.leads, None, settings, where)
    try:
        fields = record_answer(
            predictor, segment.signal, segment.fs, segment.leads, gate, age=body.age, sex=body.sex
        )
    except ValueError as err:  # unknown or repeated leads, too short, non-finite outputs
        raise _unprocessable(f"{where}{err}") from err
    return HeartDiseaseResult(**fields)


def _heart_disease_results(
    loaded: LoadedModel,
    requests: list[HeartDiseaseRequest],
    settings: ServiceSettings,
    gate: Gate,
    batch: bool,
) -> list[HeartDiseaseResult]:
    predictor = loaded.predictor
    key = "records" if batch else None
    if isinstance(predictor, RecordPredictor):
        return [
            _record_model_result(predictor, r, settings, gate, _where(key, i))
            for i, r in enumerate(requests)
        ]
    if not isinstance(predictor, HeartDiseasePredictor):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "wrong model kind loaded")
    records = [
        _segment(r.signal, r.fs, r.leads, None, settings, _where(key, i))
        for i, r in enumerate(requests)
    ]
    try:
        with gate:
            probs = _finite(predictor.predict_many(records))
    except ValueError as err:  # SegmentError (with the item's index) or a preprocessing error
        raise _unprocessable(f"{_where(key, getattr(err, 'index', None))}{err}") from err
    disease = predictor.heart_disease_probability(probs)
    classes = predictor.card.classes
    return [
        HeartDiseaseResult(
            probabilities=dict(zip(classes, row.tolist(), strict=True)),
            heart_disease_probability=float(p),
            labels=[c for c, v in zip(classes, row, strict=True) if v >= 0.5],
            warnings=_record_warnings(record, predictor),
        )
        for row, p, record in zip(probs, disease, records, strict=True)
    ]


@predict_router.post("/heart-disease", response_model=HeartDiseaseResponse)
async def predict_heart_disease(
    body: HeartDiseaseRequest,
    loaded: HeartDiseaseModelDep,
    settings: SettingsDep,
    gate: InferenceGateDep,
    request: Request,
) -> HeartDiseaseResponse:
    """PTB-XL diagnostic superclass probabilities of one record, 1 - P(NORM) and the decision.

    The record model answers for any subset of the 12 leads (``leads_used``, ``reduced_leads``:
    fewer leads, less certain) and reads the optional ``age`` and ``sex``; ``heart_disease`` is
    the yes/no decision at the operating point chosen on validation records for that lead set.
    """
    request.state.n_samples = len(body.signal)
    (result,) = await run_inference(
        lambda held: _heart_disease_results(loaded, [body], settings, held, batch=False),
        len(body.signal) * len(body.leads),
        settings,
        gate,
    )
    return HeartDiseaseResponse.model_construct(**dict(result), model=_model_ref(loaded))


@predict_router.post("/heart-disease/batch", response_model=HeartDiseaseBatchResponse)
async def predict_heart_disease_batch(
    body: HeartDiseaseBatchRequest,
    loaded: HeartDiseaseModelDep,
    settings: SettingsDep,
    gate: InferenceGateDep,
    request: Request,
) -> HeartDiseaseBatchResponse:
    """Several records through one forward pass."""
    request.state.n_samples = sum(len(r.signal) for r in body.records)
    _check_batch_size(len(body.records), "records", settings)
    results = await run_inference(
        lambda held: _heart_disease_results(loaded, body.records, settings, held, batch=True),
        sum(len(r.signal) * len(r.leads) for r in body.records),
        settings,
        gate,
    )
    return HeartDiseaseBatchResponse(model=_model_ref(loaded), results=results)


# --------------------------------------------------------------------------- operations
@ops_router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """Liveness: the process answers (models may still be missing; see /ready)."""
    return HealthResponse()


def _statuses(holder: ModelHolder) -> list[ModelStatus]:
    return [
        ModelStatus(
            task=slot.task,
            name=slot.name,
            alias=slot.alias,
            loaded=slot.current is not None,
            version=None if slot.current is None else slot.current.version,
            error=slot.error if slot.current is None else None,
            last_reload_error=slot.last_reload_error,
            last_reload_at=slot.last_reload_at,
        )
        for slot in holder.slots.values()
    ]


@ops_router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "A configured model is missing."}},
)
async def ready(holder: HolderDep, response: Response) -> ReadyResponse:
    """Readiness: 200 when every configured model is loaded, else 503 naming what is missing."""
    if not holder.ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadyResponse(ready=holder.ready, models=_statuses(holder))


@ops_router.get("/models", response_model=ModelsResponse, responses={503: _ERRORS[503]})
async def list_models(holder: HolderDep) -> ModelsResponse:
    """The served versions: card (classes, leads, rates, preprocessing) and test metrics."""
    models, unavailable = [], []
    for slot in holder.slots.values():
        loaded = slot.current
        if loaded is None:
            unavailable.append(
                UnavailableModel(task=slot.task, name=slot.name, alias=slot.alias, error=slot.error)
            )
            continue
        card = loaded.predictor.card
        models.append(
            ModelInfo(
                task=loaded.task,
                name=loaded.name,
                alias=loaded.alias,
                version=loaded.version,
                run_id=loaded.run_id,
                source=loaded.source,
                loaded_at=loaded.loaded_at,
                classes=list(card.classes),
                leads=list(card.leads),
                model_fs_hz=card.preprocess.fs_target,
                input_shape=list(card.input_shape),
                preprocess=card.preprocess.to_dict(),
                architecture=card.architecture.to_dict(),
                test_metrics=loaded.test_metrics,
            )
        )
    return ModelsResponse(models=models, unavailable=unavailable)


@admin_router.post("/reload", response_model=ReloadResponse, responses={503: _ERRORS[503]})
async def reload_models(holder: HolderDep, force: bool = False) -> ReloadResponse:
    """Re-resolve the alias of every model and swap in versions that changed.

    A version that fails to load is reported here and in /ready; the previous one keeps serving.
    ``force=true`` reloads even when the version is unchanged.
    """
    outcomes = await run_in_threadpool(holder.reload_all, force=force)
    return ReloadResponse(ok=all(o.error is None for o in outcomes), outcomes=outcomes)
