"""FastAPI dependencies: settings, the served models and the optional API key.

They are ``async`` on purpose: they only read state, and a sync dependency would cost every request
an extra hop through the threadpool.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from models.tasks import TASK_ARRHYTHMIA, TASK_HEART_DISEASE
from service.batcher import StripBatcher
from service.registry_watch import LoadedModel, ModelHolder
from service.settings import ServiceSettings

__all__ = [
    "API_KEY_HEADER",
    "ArrhythmiaModelDep",
    "BatcherDep",
    "HeartDiseaseModelDep",
    "HolderDep",
    "InferenceGateDep",
    "SettingsDep",
    "require_api_key",
    "require_json",
]

API_KEY_HEADER = "X-API-Key"
_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Needed by predict and admin endpoints when ECG_SERVICE_API_KEY is set.",
)


async def get_app_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_holder(request: Request) -> ModelHolder:
    holder = getattr(request.app.state, "models", None)
    if holder is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "models are not loaded yet: the service is still starting",
        )
    return holder


SettingsDep = Annotated[ServiceSettings, Depends(get_app_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]


async def get_inference_gate(holder: HolderDep) -> threading.BoundedSemaphore:
    return holder.inference_gate


InferenceGateDep = Annotated[threading.BoundedSemaphore, Depends(get_inference_gate)]


async def get_batcher(holder: HolderDep) -> StripBatcher:
    return holder.batcher


BatcherDep = Annotated[StripBatcher, Depends(get_batcher)]


async def require_api_key(
    settings: SettingsDep,
    key: Annotated[str | None, Security(_api_key_scheme)] = None,
) -> None:
    """401 unless the ``X-API-Key`` header matches ``settings.api_key`` (no-op when unset)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value()
    if key is None or not secrets.compare_digest(key.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )


async def require_json(request: Request) -> None:
    """415 unless a POST body is declared as JSON (``application/json`` or ``*+json``)."""
    if request.method != "POST":
        return
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not (
        media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
    ):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "expected a JSON body with Content-Type: application/json, "
            f"got {content_type or 'none'!r}",
        )


def _model(task: str) -> Callable[[ModelHolder], Awaitable[LoadedModel]]:
    """The dependency that yields the current model of ``task``, or answers 503 saying why."""

    async def dependency(holder: HolderDep) -> LoadedModel:
        loaded = holder.get(task)
        if loaded is not None:
            return loaded
        slot = holder.slots.get(task)
        if slot is None:
            reason = "it is switched off in this deployment (empty model name setting)"
        else:
            reason = f"models:/{slot.name}@{slot.alias} could not be loaded: {slot.error}"
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"the {task} model is not available: {reason}"
        )

    return dependency


ArrhythmiaModelDep = Annotated[LoadedModel, Depends(_model(TASK_ARRHYTHMIA))]
HeartDiseaseModelDep = Annotated[LoadedModel, Depends(_model(TASK_HEART_DISEASE))]
