"""What a trained ECG model is once it leaves training: logging it to MLflow and predicting with it.

A model travels as an MLflow ``pytorch`` model whose ``metadata`` holds a :class:`ModelCard`: the
task, the class names, the lead order, the architecture and the :class:`PreprocessConfig`. Whoever
loads it (the service, the evaluation code, a notebook) rebuilds preprocessing from that card, never
from its own settings, so training and serving cannot drift apart.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
from torch import nn

from models.preprocessing import (
    PreprocessConfig,
    beat_inputs,
    detect_rpeaks,
    preprocess_signal,
)
from models.recurrent import RecurrentClassifierConfig

__all__ = [
    "TASK_ARRHYTHMIA",
    "TASK_HEART_DISEASE",
    "ArrhythmiaPredictor",
    "BeatPredictions",
    "HeartDiseasePredictor",
    "ModelCard",
    "load_predictor",
    "log_ecg_model",
    "predictor_from_model_dir",
]

logger = logging.getLogger(__name__)

TASK_ARRHYTHMIA: Final = "arrhythmia"
TASK_HEART_DISEASE: Final = "heart-disease"
Task = Literal["arrhythmia", "heart-disease"]


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to turn raw ECG into this model's input and its output into answers.

    Attributes
    ----------
    task : {"arrhythmia", "heart-disease"}
        Arrhythmia: softmax over AAMI beat classes. Heart disease: independent sigmoids over
        PTB-XL superclasses (multi-label).
    classes : tuple of str
        Output order of the logits.
    leads : tuple of str
        Leads the model reads, in input-channel order (("MLII",) for arrhythmia).
    preprocess : PreprocessConfig
    architecture : RecurrentClassifierConfig
    input_shape : tuple of int
        ``(time_steps, channels)`` of one model input.
    """

    task: Task
    classes: tuple[str, ...]
    leads: tuple[str, ...]
    preprocess: PreprocessConfig
    architecture: RecurrentClassifierConfig
    input_shape: tuple[int, int]

    def to_metadata(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "classes": list(self.classes),
            "leads": list(self.leads),
            "preprocess": self.preprocess.to_dict(),
            "architecture": self.architecture.to_dict(),
            "input_shape": list(self.input_shape),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> ModelCard:
        try:
            return cls(
                task=meta["task"],
                classes=tuple(meta["classes"]),
                leads=tuple(meta["leads"]),
                preprocess=PreprocessConfig.from_dict(meta["preprocess"]),
                architecture=RecurrentClassifierConfig.from_dict(meta["architecture"]),
                input_shape=(int(meta["input_shape"][0]), int(meta["input_shape"][1])),
            )
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(
                f"model metadata is not an ECG model card: missing or bad {err}"
            ) from err


def log_ecg_model(
    model: nn.Module,
    card: ModelCard,
    input_example: np.ndarray,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
) -> Any:
    """Log ``model`` with ``mlflow.pytorch`` into the active run, with signature, example and card.

    Parameters
    ----------
    model : nn.Module
        Takes float32 ``(batch, *card.input_shape)``, returns ``(batch, len(card.classes))`` logits.
    card : ModelCard
        Stored in the MLmodel file's ``metadata``.
    input_example : np.ndarray
        float32 ``(k, *card.input_shape)``: a few real inputs.
    registered_model_name : str, optional
        Also create a new version of this registered model.

    Returns
    -------
    mlflow.models.model.ModelInfo
    """
    import mlflow
    from mlflow.models import infer_signature

    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(np.asarray(input_example, dtype=np.float32))).numpy()
    signature = infer_signature(np.asarray(input_example, dtype=np.float32), out)
    models_pkg = Path(__file__).resolve().parent
    return mlflow.pytorch.log_model(
        model,
        name=name,
        signature=signature,
        input_example=np.asarray(input_example, dtype=np.float32),
        metadata=card.to_metadata(),
        registered_model_name=registered_model_name,
        code_paths=[str(models_pkg)],
        serialization_format="pickle",  # an nn.Module back, with eval() and dynamic batch size
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "scipy", "wfdb"],
    )


@dataclass(frozen=True)
class BeatPredictions:
    """Per-beat answers for one single-lead segment.

    Attributes
    ----------
    r_peaks : np.ndarray
        int64 ``(n_beats,)`` sample indices at the input rate.
    probabilities : np.ndarray
        float32 ``(n_beats, n_classes)``, rows sum to 1.
    classes : tuple of str
    """

    r_peaks: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]

    @property
    def labels(self) -> list[str]:
        return (
            [self.classes[i] for i in self.probabilities.argmax(axis=1)]
            if len(self.r_peaks)
            else []
        )


class _Predictor:
    def __init__(self, module: nn.Module, card: ModelCard) -> None:
        self.module = module.eval()
        self.card = card

    @torch.inference_mode()
    def _logits(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros((0, len(self.card.classes)), dtype=np.float32)
        return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


class ArrhythmiaPredictor(_Predictor):
    """Classify every beat of single-lead ECG segments into AAMI classes."""

    def predict_many(
        self, segments: list[tuple[np.ndarray, float, np.ndarray | None]]
    ) -> list[BeatPredictions]:
        """Beats of several segments through one forward pass.

        Parameters
        ----------
        segments : list of (signal, fs, r_peaks)
            ``signal`` raw ``(n_samples,)`` in mV at ``fs`` Hz; ``r_peaks`` known R-peak indices at
            ``fs`` or None to detect them.
        """
        inputs, peaks_list = [], []
        for signal, fs, r_peaks in segments:
            peaks = detect_rpeaks(signal, fs) if r_peaks is None else np.asarray(r_peaks, np.int64)
            peaks_list.append(peaks)
            inputs.append(beat_inputs(signal, fs, peaks, self.card.preprocess))
        x = np.concatenate(inputs, axis=0) if inputs else np.zeros((0, *self.card.input_shape))
        logits = self._logits(x)
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        out, start = [], 0
        for peaks in peaks_list:
            out.append(BeatPredictions(peaks, probs[start : start + len(peaks)], self.card.classes))
            start += len(peaks)
        return out

    def predict(
        self, signal: np.ndarray, fs: float, r_peaks: np.ndarray | None = None
    ) -> BeatPredictions:
        """Beats of one raw ``(n_samples,)`` segment at ``fs`` Hz (see :meth:`predict_many`)."""
        return self.predict_many([(signal, fs, r_peaks)])[0]


class HeartDiseasePredictor(_Predictor):
    """Superclass probabilities for 12-lead records (multi-label, independent sigmoids)."""

    def record_inputs(
        self, signal: np.ndarray, fs: float, leads: list[str] | tuple[str, ...]
    ) -> np.ndarray:
        """Model input ``card.input_shape`` for one raw ``(n_samples, n_leads)`` record at ``fs``.

        Leads are matched by name (case-insensitive) and reordered to the model's order; the
        preprocessed record is cut or edge-padded to the model's length.
        """
        x = np.asarray(signal, dtype=np.float32)
        wanted = [name.lower() for name in self.card.leads]
        given = [name.lower() for name in leads]
        missing = [
            name for name, low in zip(self.card.leads, wanted, strict=True) if low not in given
        ]
        if missing:
            raise ValueError(f"missing leads {missing}; the model needs {list(self.card.leads)}")
        if x.ndim != 2 or x.shape[1] != len(given):
            raise ValueError(
                f"signal must be (n_samples, {len(given)}) for leads {list(leads)}, got {x.shape}"
            )
        x = x[:, [given.index(name) for name in wanted]]
        t = self.card.input_shape[0]
        # Cut the raw record to the model's duration first: training filtered and z-scored exactly
        # that much, and z-scoring a longer record would change the scale.
        x = x[: max(1, round(t * fs / self.card.preprocess.fs_target))]
        y = preprocess_signal(x, fs, self.card.preprocess)
        if y.shape[0] >= t:
            return y[:t]
        return np.pad(y, ((0, t - y.shape[0]), (0, 0)), mode="edge")

    def predict_many(
        self, records: list[tuple[np.ndarray, float, list[str] | tuple[str, ...]]]
    ) -> np.ndarray:
        """Probabilities ``(n_records, n_classes)`` of ``(signal, fs, leads)`` records, one pass."""
        x = np.stack([self.record_inputs(s, fs, leads) for s, fs, leads in records])
        return torch.sigmoid(torch.from_numpy(self._logits(x))).numpy()

    def heart_disease_probability(self, probabilities: np.ndarray) -> np.ndarray:
        """1 - P(NORM): the probability that a record is not a normal ECG, ``(n_records,)``."""
        return 1.0 - probabilities[:, self.card.classes.index("NORM")]


Predictor = ArrhythmiaPredictor | HeartDiseasePredictor


def predictor_from_model_dir(path: str | Path) -> Predictor:
    """Build the predictor of a local MLflow model directory (one holding an ``MLmodel`` file)."""
    import mlflow.pytorch
    from mlflow.models import Model

    meta = Model.load(str(path)).metadata or {}
    card = ModelCard.from_metadata(meta)
    module = mlflow.pytorch.load_model(str(path), map_location="cpu")
    if getattr(module, "config", card.architecture) != card.architecture:
        raise ValueError(
            f"model at {path}: its architecture {module.config} differs from its card's "
            f"{card.architecture}; the model was logged inconsistently"
        )
    cls = ArrhythmiaPredictor if card.task == TASK_ARRHYTHMIA else HeartDiseasePredictor
    return cls(module, card)


def load_predictor(
    model_uri: str, dst_dir: str | Path | None = None, *, tracking_uri: str | None = None
) -> Predictor:
    """Download ``model_uri`` (e.g. ``models:/ecg-arrhythmia@champion``) and build its predictor.

    ``tracking_uri`` (also used as the registry URI) overrides MLflow's current one.
    """
    import mlflow.artifacts

    if tracking_uri is not None and model_uri.startswith("models:/"):
        # MLflow resolves models:/ URIs against the global registry URI only; resolve it here.
        model_uri = _models_uri_location(model_uri, tracking_uri)

    def fetch(dst: str) -> Predictor:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri,
            dst_path=dst,
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
        )
        return predictor_from_model_dir(local)

    if dst_dir is not None:
        return fetch(str(dst_dir))
    # The loaded module lives in memory: the downloaded copy is not needed afterwards, and a
    # long-running service that reloads models must not leave one behind per load.
    with tempfile.TemporaryDirectory(prefix="ecg-model-") as tmp:
        return fetch(tmp)


def _models_uri_location(model_uri: str, tracking_uri: str) -> str:
    """Storage location of ``models:/<name>/<version>``, ``@<alias>`` or ``models:/<model_id>``."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    parts = get_model_name_and_version(client, model_uri)
    if len(parts) == 1:
        return str(client.get_logged_model(parts[0]).artifact_location)
    return str(client.get_model_version_download_uri(parts[0], parts[1]))
