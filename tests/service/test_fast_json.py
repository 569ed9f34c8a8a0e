"""The pydantic-core JSON body parser decodes what the stdlib does and fails the way it did."""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service.fast_json import FastJSONRoute


class _Body(BaseModel):
    signal: list[float]


def _client(route_class: type[APIRoute] = FastJSONRoute) -> TestClient:
    router = APIRouter(route_class=route_class)

    @router.post("/echo")
    def echo(body: _Body) -> _Body:
        return body

    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def test_same_floats_as_the_stdlib() -> None:
    x = np.random.default_rng(0).normal(scale=3.0, size=5000)
    body = json.dumps({"signal": [float(v) for v in x] + [round(float(v), 4) for v in x]})
    r = _client().post("/echo", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["signal"] == json.loads(body)["signal"]


def test_malformed_bodies_keep_fastapis_answers() -> None:
    fast, plain = _client(), _client(APIRoute)
    headers = {"content-type": "application/json"}
    bodies = [b'{"signal": [1.0,', b"\xff\xfe", b"\xff", b"[1, 2]", b'{"signal": "x"}', b"nul"]
    for body in bodies:
        got = fast.post("/echo", content=body, headers=headers)
        want = plain.post("/echo", content=body, headers=headers)
        assert got.status_code == want.status_code >= 400, body
        assert got.json() == want.json(), body
