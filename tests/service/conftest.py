"""Fixtures of the service tests: real tiny models in a real sqlite MLflow registry, real apps.

There is deliberately no ``__init__.py`` in this folder: with one (and none in ``tests/``) pytest
would import it as a package named ``service`` and shadow the real ``service`` package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_helpers import make_settings
from fastapi.testclient import TestClient

from bench.tiny_models import TinyRegistry, build_registry, train_arrhythmia, train_heart_disease
from models.predictor import ArrhythmiaPredictor, load_predictor
from models.tasks import TASK_ARRHYTHMIA, TASK_HEART_DISEASE
from service.main import create_app


def _optional(request: pytest.FixtureRequest, name: str) -> Path | None:
    try:
        return request.getfixturevalue(name)  # type: ignore[no-any-return]
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="session")
def tiny_trained(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Both tiny models trained on real records (synthetic signals when the mirror is absent)."""
    mitdb, ptbxl = _optional(request, "mitdb_dir"), _optional(request, "ptbxl_dir")
    return {
        TASK_ARRHYTHMIA: train_arrhythmia(mitdb),
        TASK_HEART_DISEASE: train_heart_disease(ptbxl),
    }


@pytest.fixture(scope="session")
def tiny_registry(
    tmp_path_factory: pytest.TempPathFactory, tiny_trained: dict[str, Any]
) -> TinyRegistry:
    """A sqlite MLflow registry with ``ecg-arrhythmia@champion``, ``ecg-heart-disease@champion``."""
    root = tmp_path_factory.mktemp("registry")
    return build_registry(root, None, None, trained=tiny_trained)


@pytest.fixture(scope="module")
def client(tiny_registry: TinyRegistry) -> Iterator[TestClient]:
    """An in-process client of an app serving the tiny champions (lifespan run)."""
    with TestClient(create_app(make_settings(tiny_registry))) as c:
        yield c


@pytest.fixture(scope="module")
def arrhythmia_predictor(tiny_registry: TinyRegistry) -> ArrhythmiaPredictor:
    """The tiny arrhythmia champion, loaded from the registry as the service loads it."""
    p = load_predictor(
        f"models:/{tiny_registry.arrhythmia_name}@champion", tracking_uri=tiny_registry.tracking_uri
    )
    assert isinstance(p, ArrhythmiaPredictor)
    return p
