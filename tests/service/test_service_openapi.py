"""Property-based tests against the app's own OpenAPI schema (schemathesis).

Every operation gets its documented examples (real MIT-BIH and PTB-XL signals) plus generated
requests, valid and invalid. Checks: never a 5xx, status codes / content types / bodies as
documented. Schema-valid requests may still be refused with a documented 422 (a signal shorter
than the model's beat window, leads the model lacks), so "positive data acceptance" is not checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from app_helpers import make_settings, serve_in_thread
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench.tiny_models import TinyRegistry
from service.main import create_app
from service.settings import ServiceSettings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _spec() -> dict[str, Any]:
    # The schema depends on the code only (no models, no environment): build it from an app that
    # is never started. The tests then call a started one over real HTTP.
    return create_app(ServiceSettings(mlflow_tracking_uri="sqlite:///unused.db")).openapi()


schema = schemathesis.openapi.from_dict(_spec())


@pytest.fixture(scope="module")
def live_url(tiny_registry: TinyRegistry) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 serving the tiny champions."""
    with serve_in_thread(create_app(make_settings(tiny_registry))) as url:
        yield url


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_api_conforms_to_its_schema(case: Any, live_url: str) -> None:
    case.call_and_validate(base_url=live_url, checks=CHECKS)


def test_docs_and_examples(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict/arrhythmia"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    example = body["examples"]["mitdb_119"]["value"]
    assert example["fs"] == 360 and len(example["signal"]) == 1080
    # The documented example is a real strip and the service answers it: N, V, N as annotated.
    r = client.post("/predict/arrhythmia", json=example)
    assert r.status_code == 200 and r.json()["summary"]["n_beats"] == 3
    hd = spec["paths"]["/predict/heart-disease"]["post"]["requestBody"]["content"]
    record = hd["application/json"]["examples"]["ptbxl_00001"]["value"]
    assert client.post("/predict/heart-disease", json=record).status_code == 200
    # The API key scheme is documented.
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
