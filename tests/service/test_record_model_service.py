"""The service answering with a record-model champion: any lead subset, age and sex, decision.

A tiny :class:`models.record_model.RecordModel` is trained for a few steps on real PTB-XL records
(random lead subsets, as in training), logged as weights with
:func:`models.record_predictor.log_record_model` into a real sqlite registry as the
``ecg-heart-disease`` champion, and served by a real app (TestClient: real ASGI requests).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import schemathesis
import torch
from app_helpers import make_settings, serve_in_thread
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from torch import nn

from bench.tiny_models import TinyRegistry, build_registry, ptbxl_record, use_tracking_uri
from models.labels import PTBXL_SUPERCLASSES
from models.preprocessing import preprocess_signal
from models.record_model import (
    PTBXL_LEADS,
    RecordModel,
    RecordModelConfig,
    encode_demographics,
    sample_lead_masks,
)
from models.record_predictor import RecordModelCard, SubsetCalibration, log_record_model
from models.tasks import dataset_spec
from service.main import create_app

HD = "/predict/heart-disease"
LIMB = ["I", "II", "III", "aVR", "aVL", "aVF"]


def _train_tiny_record_model(ptbxl_dir: Path, n: int = 24) -> tuple[RecordModel, RecordModelCard]:
    torch.manual_seed(0)
    preprocess = dataset_spec("ptb-xl").preprocess
    statements = pd.read_csv(ptbxl_dir / "scp_statements.csv", index_col=0)
    diag = statements[statements["diagnostic"] == 1]["diagnostic_class"].dropna().to_dict()
    table = pd.read_csv(ptbxl_dir / "ptbxl_database.csv", index_col="ecg_id")
    xs, ys = [], []
    for ecg_id in table.index[:n]:
        signal, fs, _ = ptbxl_record(ptbxl_dir, int(ecg_id))
        xs.append(preprocess_signal(signal, fs, preprocess))
        codes = {diag[c] for c in ast.literal_eval(table.loc[ecg_id, "scp_codes"]) if c in diag}
        ys.append([float(c in codes) for c in PTBXL_SUPERCLASSES])
    x = torch.from_numpy(np.stack(xs).astype(np.float32))
    y = torch.tensor(ys)
    ages = table["age"].to_numpy()[:n]
    demo = torch.from_numpy(encode_demographics(ages, table["sex"].to_numpy()[:n]))
    arch = RecordModelConfig(hidden_size=8, conv_channels=(8, 8, 8))
    model = RecordModel(arch)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        mask = sample_lead_masks(n, gen)
        loss = nn.BCEWithLogitsLoss()(model(x * mask[:, None, :], mask, demo), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    card = RecordModelCard(
        classes=tuple(PTBXL_SUPERCLASSES),
        leads=PTBXL_LEADS,
        preprocess=preprocess,
        architecture=arch,
        input_shape=(1000, 12),
        calibration={
            "12-lead": SubsetCalibration(1.0, 0.5),
            "limb-6/no-demographics": SubsetCalibration(1.2, 0.45),
            "lead-I": SubsetCalibration(1.5, 0.55),
        },
    )
    return model.eval(), card


@pytest.fixture(scope="module")
def record_registry(
    ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory, tiny_trained: dict[str, Any]
) -> TinyRegistry:
    """The tiny registry with a record model as version 2 and champion of ecg-heart-disease."""
    import mlflow
    from mlflow import MlflowClient

    registry = build_registry(tmp_path_factory.mktemp("record-registry"), None, None,
                              trained=tiny_trained)  # fmt: skip
    model, card = _train_tiny_record_model(ptbxl_dir)
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    exp = client.get_experiment_by_name("tiny-service-models")
    with use_tracking_uri(registry.tracking_uri), mlflow.start_run(experiment_id=exp.experiment_id):
        info = log_record_model(model, card, registered_model_name=registry.heart_disease_name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(registry.heart_disease_name, registry.alias, version)
    return registry


@pytest.fixture(scope="module")
def client(record_registry: TinyRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(record_registry))) as c:
        yield c


@pytest.fixture(scope="module")
def record(ptbxl_dir: Path) -> tuple[np.ndarray, float, list[str]]:
    return ptbxl_record(ptbxl_dir, 1)


def _body(record: tuple[np.ndarray, float, list[str]], leads: list[str], **extra: Any) -> dict:
    signal, fs, names = record
    upper = [n.upper() for n in names]
    columns = [upper.index(lead.upper()) for lead in leads]
    return {"fs": fs, "leads": leads, "signal": signal[:, columns].tolist(), **extra}


def test_twelve_leads(client: TestClient, record: tuple[np.ndarray, float, list[str]]) -> None:
    r = client.post(HD, json=_body(record, record[2]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["version"] == "2"
    assert body["leads_used"] == list(PTBXL_LEADS) and body["reduced_leads"] is False
    assert body["threshold"] == 0.5 and not body["demographics_used"]
    assert body["heart_disease"] == (body["heart_disease_probability"] >= body["threshold"])
    assert set(body["probabilities"]) == set(PTBXL_SUPERCLASSES)
    assert not [w for w in body["warnings"] if "less certain" in w]


def test_six_limb_leads_say_the_answer_is_less_certain(
    client: TestClient, record: tuple[np.ndarray, float, list[str]]
) -> None:
    r = client.post(HD, json=_body(record, LIMB))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["leads_used"] == ["I", "II", "III", "AVR", "AVL", "AVF"]
    assert body["reduced_leads"] is True and body["threshold"] == 0.45
    assert any("less certain" in w for w in body["warnings"])
    twelve = client.post(HD, json=_body(record, record[2])).json()
    assert body["probabilities"] != twelve["probabilities"]  # the chest leads were not read


def test_lead_one_alone_with_age_and_sex(
    client: TestClient, record: tuple[np.ndarray, float, list[str]]
) -> None:
    without = client.post(HD, json=_body(record, ["I"])).json()
    r = client.post(HD, json=_body(record, ["I"], age=56, sex="female"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["leads_used"] == ["I"] and body["reduced_leads"] and body["demographics_used"]
    assert body["threshold"] == 0.55 and not without["demographics_used"]
    assert body["heart_disease"] == (body["heart_disease_probability"] >= 0.55)
    only_age = client.post(HD, json=_body(record, ["I"], age=56)).json()
    assert not only_age["demographics_used"]
    assert any("only together" in w for w in only_age["warnings"])


@pytest.mark.parametrize(
    ("leads", "needle"),
    [(["V7"], "unknown leads"), (["I", "i"], "duplicate lead"), (["I", "Foo"], "unknown leads")],
)
def test_bad_lead_names_are_422(
    client: TestClient, record: tuple[np.ndarray, float, list[str]], leads: list[str], needle: str
) -> None:
    signal = record[0][:, : len(leads)]
    r = client.post(HD, json={"fs": 100, "leads": leads, "signal": signal.tolist()})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


def test_bad_age_and_sex_are_422(
    client: TestClient, record: tuple[np.ndarray, float, list[str]]
) -> None:
    assert client.post(HD, json=_body(record, ["I"], age=-1, sex="male")).status_code == 422
    assert client.post(HD, json=_body(record, ["I"], age=50, sex="x")).status_code == 422


def test_too_short_record_is_422(
    client: TestClient, record: tuple[np.ndarray, float, list[str]]
) -> None:
    body = _body(record, ["I"])
    body["signal"] = body["signal"][:500]
    r = client.post(HD, json=body)
    assert r.status_code == 422 and "too short" in r.json()["detail"]


def test_batch_of_different_lead_sets(
    client: TestClient, record: tuple[np.ndarray, float, list[str]]
) -> None:
    r = client.post(
        f"{HD}/batch", json={"records": [_body(record, record[2]), _body(record, ["I"])]}
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["leads_used"]) for x in results] == [12, 1]
    bad = client.post(
        f"{HD}/batch",
        json={"records": [_body(record, ["I"]), _body(record, ["I"]) | {"leads": ["X"]}]},
    )
    assert bad.status_code == 422 and bad.json()["detail"].startswith("records[1]: ")


def test_file_endpoints_read_whichever_leads_the_file_holds(
    client: TestClient, ptbxl_dir: Path, record: tuple[np.ndarray, float, list[str]]
) -> None:
    base = ptbxl_dir / "records100" / "00000" / "00001_lr"
    files = [
        ("files", (p.name, p.read_bytes(), "application/octet-stream"))
        for p in (base.with_suffix(".hea"), base.with_suffix(".dat"))
    ]
    r = client.post(f"{HD}/file", files=files, params={"age": 56, "sex": "female"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["leads_used"]) == 12 and body["demographics_used"]
    json_answer = client.post(HD, json=_body(record, record[2], age=56, sex="female")).json()
    assert body["heart_disease_probability"] == pytest.approx(
        json_answer["heart_disease_probability"], abs=1e-5
    )
    signal = np.ascontiguousarray(record[0][:, :6], dtype="<f4")
    r = client.post(
        f"{HD}/binary",
        content=signal.tobytes(),
        params={"fs": 100, "leads": "I,II,III,aVR,aVL,aVF"},
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["reduced_leads"] and len(r.json()["leads_used"]) == 6
    r = client.post(
        f"{HD}/binary",
        content=signal[:, :2].copy().tobytes(),
        params={"fs": 100, "leads": "X1,X2"},
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 422 and "no usable lead" in r.json()["detail"]


# --------------------------------------------------------------------------- schema conformance
def _spec() -> dict[str, Any]:
    from service.settings import ServiceSettings

    return create_app(ServiceSettings(mlflow_tracking_uri="sqlite:///unused.db")).openapi()


schema = schemathesis.openapi.from_dict(_spec()).include(path_regex="heart-disease")


@pytest.fixture(scope="module")
def record_live_url(record_registry: TinyRegistry) -> Iterator[str]:
    """A real uvicorn server serving the record-model champion."""
    with serve_in_thread(create_app(make_settings(record_registry))) as url:
        yield url


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_heart_disease_endpoints_conform_with_the_record_model(
    case: Any, record_live_url: str
) -> None:
    """Generated requests (any leads, ages, sexes) against the record model: never a 5xx."""
    case.call_and_validate(
        base_url=record_live_url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
