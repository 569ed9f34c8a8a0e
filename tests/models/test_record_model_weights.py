"""A logged record model is weights and a card, never code: tampered artifacts are refused.

A tiny untrained :class:`models.record_model.RecordModel` is logged with
:func:`models.record_predictor.log_record_model` into a real sqlite MLflow store (artifacts in a
local directory); the tests then overwrite its stored files the way someone with write access to
the registry could.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from models.labels import PTBXL_SUPERCLASSES
from models.record_model import PTBXL_LEADS, RecordModel, RecordModelConfig
from models.record_predictor import (
    RecordModelCard,
    SubsetCalibration,
    load_record_predictor,
    log_record_model,
)
from models.tasks import dataset_spec
from models.weights import WEIGHTS_FILE


class _WritesMarker:
    """Unpickling this writes a marker file: proof that a loader ran code from the artifact."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.fixture
def logged(tmp_path: Path) -> tuple[str, str, Path, RecordModel]:
    """``(tracking URI, model URI, stored model dir, module)`` of a freshly logged tiny model."""
    import mlflow
    from mlflow import MlflowClient

    torch.set_num_threads(1)
    torch.manual_seed(0)
    arch = RecordModelConfig(hidden_size=8, conv_channels=(4, 4, 4))
    module = RecordModel(arch).eval()
    card = RecordModelCard(
        classes=tuple(PTBXL_SUPERCLASSES),
        leads=PTBXL_LEADS,
        preprocess=dataset_spec("ptb-xl").preprocess,
        architecture=arch,
        input_shape=(1000, 12),
        calibration={"12-lead": SubsetCalibration(1.5, 0.4)},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("record", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp):
            info = log_record_model(module, card)
    finally:
        mlflow.set_tracking_uri(None)
    (mlmodel,) = list((tmp_path / "art").rglob("MLmodel"))
    return uri, str(info.model_uri), mlmodel.parent, module


def test_the_artifact_holds_weights_and_card_and_loads(
    logged: tuple[str, str, Path, RecordModel],
) -> None:
    import mlflow.pyfunc

    uri, model_uri, model_dir, module = logged
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    assert "data/ecg/weights.safetensors" in files and "data/ecg/card.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth", ".py"))], files
    flavors = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]
    assert set(flavors) == {"python_function"}
    assert flavors["python_function"]["loader_module"] == "models.record_predictor"
    predictor = load_record_predictor(model_uri, tracking_uri=uri)
    for (name, a), b in zip(
        module.state_dict().items(), predictor.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert predictor.card.calibration["12-lead"] == SubsetCalibration(1.5, 0.4)
    x = np.random.default_rng(0).normal(size=(2, 1000, 12)).astype(np.float32)
    logits = np.asarray(mlflow.pyfunc.load_model(str(model_dir)).predict(x))
    with torch.inference_mode():
        expected = module(torch.from_numpy(x), torch.ones(2, 12), torch.zeros(2, 3)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_a_pickle_in_place_of_the_weights_is_refused_not_run(
    logged: tuple[str, str, Path, RecordModel], tmp_path: Path
) -> None:
    uri, model_uri, model_dir, _ = logged
    marker = tmp_path / "marker"
    weights = model_dir / "data" / "ecg" / WEIGHTS_FILE
    for write in (
        lambda: weights.write_bytes(pickle.dumps(_WritesMarker(marker))),
        lambda: torch.save({"state": _WritesMarker(marker)}, weights),
    ):
        write()
        with pytest.raises(ValueError, match="not a safetensors weights file"):
            load_record_predictor(model_uri, tracking_uri=uri)
        assert not marker.exists()


def test_a_loader_switched_to_a_pickled_model_is_refused(
    logged: tuple[str, str, Path, RecordModel], tmp_path: Path
) -> None:
    uri, model_uri, model_dir, _ = logged
    marker = tmp_path / "marker"
    (model_dir / "model.pth").write_bytes(pickle.dumps(_WritesMarker(marker)))
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    mlmodel["flavors"] = {
        "pytorch": {"model_data": "model.pth", "pytorch_version": str(torch.__version__)},
        "python_function": {"loader_module": "mlflow.pytorch", "data": "model.pth"},
    }
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ValueError, match="not a record weights model"):
        load_record_predictor(model_uri, tracking_uri=uri)
    assert not marker.exists()
