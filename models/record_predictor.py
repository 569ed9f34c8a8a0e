"""The record model once it leaves training: its card, MLflow logging and prediction.

A :class:`models.record_model.RecordModel` travels as data, never as pickled code: an MLflow
``pyfunc`` model whose ``data/ecg/`` holds its weights (safetensors, :mod:`models.weights`) and
its :class:`RecordModelCard` as ``card.json`` (also the MLmodel file's ``metadata``); loading
rebuilds the module from the card's architecture. The card holds classes, lead order,
preprocessing, architecture and, per lead subset, the temperature and heart-disease threshold
fitted on the validation split (PTB-XL fold 9). :class:`RecordPredictor` turns a raw record with
any subset of the 12 leads (and optionally the patient's age and sex) into calibrated superclass
probabilities, the heart-disease probability ``1 - P(NORM)`` and the yes/no decision at the
subset's operating point.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from models.predictor import (
    HeartDiseasePredictor,
    models_uri_location,
    predictor_from_model_dir,
)
from models.preprocessing import PreprocessConfig, preprocess_signal
from models.record_model import (
    LEAD_SUBSETS,
    RecordModel,
    RecordModelConfig,
    encode_demographics,
    lead_mask,
)
from models.weights import CARD_FILE, WEIGHTS_FILE, load_weights, log_weights_model

__all__ = [
    "MODEL_KIND",
    "PYFUNC_LOADER_MODULE",
    "RecordModelCard",
    "RecordPrediction",
    "RecordPredictor",
    "RecordPyfuncModel",
    "SubsetCalibration",
    "calibration_key",
    "is_record_model_dir",
    "load_heart_disease_predictor",
    "load_record_predictor",
    "log_record_model",
    "record_model_from_data_dir",
    "record_predictor_from_model_dir",
]

logger = logging.getLogger(__name__)

#: ``metadata["kind"]`` of a logged record model (the older heart-disease models have none).
MODEL_KIND: Final = "record-model"
#: The loader module ``mlflow models serve`` imports for a record model (this one).
PYFUNC_LOADER_MODULE: Final = "models.record_predictor"


@dataclass(frozen=True)
class SubsetCalibration:
    """Post-hoc calibration for one lead subset (fitted on validation records).

    Attributes
    ----------
    temperature : float
        Logits are divided by it before the sigmoid (1 = none).
    threshold : float
        Heart-disease decision: "yes" when ``1 - P(NORM) >= threshold`` (calibrated P).
    """

    temperature: float = 1.0
    threshold: float = 0.5


def calibration_key(subset: str, demographics: bool) -> str:
    """Key of :attr:`RecordModelCard.calibration`: ``"limb-6"`` or ``"limb-6/no-demographics"``."""
    return subset if demographics else f"{subset}/no-demographics"


@dataclass(frozen=True)
class RecordModelCard:
    """Everything needed to turn a raw record into this model's answer.

    Attributes
    ----------
    classes : tuple of str
        Output order (PTB-XL superclasses; must include NORM).
    leads : tuple of str
        Input-channel order (the 12 standard leads).
    preprocess : PreprocessConfig
    architecture : RecordModelConfig
    input_shape : tuple of int
        ``(time_steps, n_leads)``, e.g. ``(1000, 12)``: 10 s at 100 Hz.
    calibration : dict of str to SubsetCalibration
        Keyed by :func:`calibration_key`: a :data:`models.record_model.LEAD_SUBSETS` name
        ("12-lead", "limb-6", "lead-I"), with ``/no-demographics`` when age and sex are absent.
    """

    classes: tuple[str, ...]
    leads: tuple[str, ...]
    preprocess: PreprocessConfig
    architecture: RecordModelConfig
    input_shape: tuple[int, int]
    calibration: dict[str, SubsetCalibration] = dataclasses.field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "task": "heart-disease",
            "kind": MODEL_KIND,
            "classes": list(self.classes),
            "leads": list(self.leads),
            "preprocess": self.preprocess.to_dict(),
            "architecture": self.architecture.to_dict(),
            "input_shape": list(self.input_shape),
            "calibration": {k: dataclasses.asdict(v) for k, v in self.calibration.items()},
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> RecordModelCard:
        if meta.get("kind") != MODEL_KIND:
            raise ValueError(f"model metadata kind is {meta.get('kind')!r}, not {MODEL_KIND!r}")
        try:
            return cls(
                classes=tuple(meta["classes"]),
                leads=tuple(meta["leads"]),
                preprocess=PreprocessConfig.from_dict(meta["preprocess"]),
                architecture=RecordModelConfig.from_dict(meta["architecture"]),
                input_shape=(int(meta["input_shape"][0]), int(meta["input_shape"][1])),
                calibration={
                    k: SubsetCalibration(float(v["temperature"]), float(v["threshold"]))
                    for k, v in meta.get("calibration", {}).items()
                },
            )
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"model metadata is not a record-model card: bad {err}") from err

    def subset_for(self, leads: Sequence[str]) -> str:
        """The named lead subset whose calibration applies to ``leads``.

        The exact subset if named, else the smallest named subset that contains ``leads``.
        """
        given = {lead.upper() for lead in leads}
        named = sorted(LEAD_SUBSETS.items(), key=lambda kv: len(kv[1]))
        for name, subset in named:
            if given == {s.upper() for s in subset}:
                return name
        for name, subset in named:
            if given <= {s.upper() for s in subset}:
                return name
        return "12-lead"


@dataclass(frozen=True)
class RecordPrediction:
    """The answer for one record.

    Attributes
    ----------
    probabilities : dict of str to float
        Calibrated superclass probabilities (independent, multi-label).
    heart_disease_probability : float
        ``1 - P(NORM)``.
    heart_disease : bool
        The decision at ``threshold``.
    threshold : float
    leads_used : tuple of str
        The leads the model read, in its order.
    reduced_leads : bool
        Fewer than the model's 12 leads: the answer is less certain (lower validation AUC).
    calibration_subset : str
        Whose calibration and threshold were applied (:func:`calibration_key`, e.g. "limb-6").
    demographics_used : bool
        Age and sex were given and read by the model.
    """

    probabilities: dict[str, float]
    heart_disease_probability: float
    heart_disease: bool
    threshold: float
    leads_used: tuple[str, ...]
    reduced_leads: bool
    calibration_subset: str
    demographics_used: bool


class RecordPredictor:
    """Heart-disease answers for records with any subset of the 12 leads."""

    def __init__(self, module: RecordModel, card: RecordModelCard) -> None:
        self.module = module.eval()
        self.card = card

    def record_inputs(
        self, signal: np.ndarray, fs: float, leads: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Model input, lead mask and leads used for one raw record.

        Parameters
        ----------
        signal : np.ndarray
            Raw ``(n_samples, n_leads)`` in mV at ``fs`` Hz (about 10 s).
        fs : float
        leads : sequence of str
            Names of the signal's columns (case-insensitive; any subset of the model's leads).

        Returns
        -------
        x : np.ndarray
            float32 ``card.input_shape``: preprocessed, absent leads zero.
        mask : np.ndarray
            float32 ``(n_leads,)``.
        leads_used : tuple of str

        Raises
        ------
        ValueError
            Unknown or repeated lead names, or a signal whose shape does not match ``leads``.
        """
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != len(leads):
            raise ValueError(
                f"signal must be (n_samples, {len(leads)}) for leads {list(leads)}, got {x.shape}"
            )
        upper = [lead.upper() for lead in leads]
        if len(set(upper)) != len(upper):
            raise ValueError(f"repeated lead names in {list(leads)}")
        model_leads = [lead.upper() for lead in self.card.leads]
        mask = lead_mask(list(leads), self.card.leads)[0]  # raises on unknown leads
        t, n = self.card.input_shape
        # Cut to the model's duration before filtering and z-scoring, as training saw it.
        x = x[: max(1, round(t * fs / self.card.preprocess.fs_target))]
        y = preprocess_signal(x, fs, self.card.preprocess)
        y = y[:t] if y.shape[0] >= t else np.pad(y, ((0, t - y.shape[0]), (0, 0)), mode="edge")
        out = np.zeros((t, n), dtype=np.float32)
        out[:, [model_leads.index(u) for u in upper]] = y
        used = tuple(lead for lead, m in zip(self.card.leads, mask, strict=True) if m)
        return out, mask, used

    @torch.inference_mode()
    def predict(
        self,
        signal: np.ndarray,
        fs: float,
        leads: Sequence[str],
        *,
        age: float | None = None,
        sex: int | None = None,
    ) -> RecordPrediction:
        """Calibrated answer for one raw record (see :meth:`record_inputs`).

        Parameters
        ----------
        age : float, optional
            Years.
        sex : {0, 1}, optional
            0 male, 1 female (PTB-XL's coding). Age and sex are used only when both are given.
        """
        x, mask, used = self.record_inputs(signal, fs, leads)
        demo = encode_demographics([age], [sex])
        logits = self.module(
            torch.from_numpy(x[None]), torch.from_numpy(mask[None]), torch.from_numpy(demo)
        )[0].numpy()
        demo_used = bool(demo[0, 2]) and self.card.architecture.demographics
        subset = self.card.subset_for(used)
        key = calibration_key(subset, demo_used)
        cal = self.card.calibration.get(key, SubsetCalibration())
        p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / cal.temperature))
        hd = 1.0 - float(p[self.card.classes.index("NORM")])
        return RecordPrediction(
            probabilities={c: float(v) for c, v in zip(self.card.classes, p, strict=True)},
            heart_disease_probability=hd,
            heart_disease=hd >= cal.threshold,
            threshold=cal.threshold,
            leads_used=used,
            reduced_leads=len(used) < len(self.card.leads),
            calibration_subset=key,
            demographics_used=demo_used,
        )


def log_record_model(
    model: RecordModel,
    card: RecordModelCard,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
) -> Any:
    """Log ``model``'s weights and ``card`` into the active run: data only, never a pickle.

    The artifact holds ``data/ecg/weights.safetensors`` (:mod:`models.weights`),
    ``data/ecg/card.json`` and the MLmodel file, whose ``python_function`` flavour names this
    module (:data:`PYFUNC_LOADER_MODULE`, installed, imported by name) as its loader. The module
    takes three inputs (signal, lead mask, demographics), so no signature is logged; load it with
    :func:`load_record_predictor`.

    Returns
    -------
    mlflow.models.model.ModelInfo
    """

    if model.config != card.architecture:
        raise ValueError("the card's architecture differs from the model's config")
    return log_weights_model(
        model,
        card.to_metadata(),
        name=name,
        loader_module=PYFUNC_LOADER_MODULE,
        registered_model_name=registered_model_name,
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            "numpy",
            "scipy",
            "safetensors",
        ],
    )


def record_model_from_data_dir(data_dir: str | Path) -> tuple[RecordModel, RecordModelCard]:
    """Rebuild a logged record model from ``card.json`` + safetensors weights (nothing unpickled).

    Raises
    ------
    ValueError
        When the card is missing or not a record-model card, or the weights are not safetensors or
        do not fit its architecture (:class:`models.weights.WeightsError`).
    """
    card_path = Path(data_dir) / CARD_FILE
    try:
        meta = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{card_path}: no readable model card ({err})") from err
    card = RecordModelCard.from_metadata(meta)
    module = load_weights(RecordModel(card.architecture), Path(data_dir) / WEIGHTS_FILE)
    assert isinstance(module, RecordModel)
    return module, card


def is_record_model_dir(path: str | Path) -> bool:
    """Whether the MLflow model directory at ``path`` names this module as its pyfunc loader."""
    from mlflow.models import Model

    pyfunc = Model.load(str(path)).flavors.get("python_function", {})
    return bool(pyfunc.get("loader_module") == PYFUNC_LOADER_MODULE)


def record_predictor_from_model_dir(path: str | Path) -> RecordPredictor:
    """The predictor of a local MLflow model directory (one holding an ``MLmodel`` file).

    Raises
    ------
    ValueError
        When the directory is not a record model logged by :func:`log_record_model` (a pickled
        ``pytorch`` model, or an MLmodel rewritten to name another loader, is refused), or its
        files are bad.
    """
    from mlflow.models import Model

    pyfunc = Model.load(str(path)).flavors.get("python_function", {})
    if pyfunc.get("loader_module") != PYFUNC_LOADER_MODULE or not pyfunc.get("data"):
        raise ValueError(
            f"model at {path} is not a record weights model (its python_function loader is "
            f"{pyfunc.get('loader_module')!r}, expected {PYFUNC_LOADER_MODULE!r}); models logged "
            "as pickles are not loaded: retrain or re-log it with log_record_model"
        )
    data_dir = (Path(path) / str(pyfunc["data"])).resolve()
    if not data_dir.is_relative_to(Path(path).resolve()):
        raise ValueError(f"model at {path}: its data directory points outside the model")
    module, card = record_model_from_data_dir(data_dir)
    return RecordPredictor(module, card)


def load_record_predictor(model_uri: str, *, tracking_uri: str | None = None) -> RecordPredictor:
    """Download ``model_uri`` (``runs:/...``, ``models:/<id>``, ``models:/<name>@<alias>``)."""
    import mlflow.artifacts

    if tracking_uri is not None and model_uri.startswith("models:/"):
        # MLflow resolves models:/ URIs against the global registry URI only; resolve it here.
        model_uri = models_uri_location(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="ecg-record-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking_uri
        )
        return record_predictor_from_model_dir(local)


class RecordPyfuncModel:
    """Logits of a record model for 12-lead model inputs (``mlflow models serve``'s ``predict``).

    Inputs are float32 ``(batch, *card.input_shape)`` preprocessed records with every lead
    present and no demographics; the full answer (any lead set, age, sex, calibration) is
    :class:`RecordPredictor`'s.
    """

    def __init__(self, module: RecordModel, card: RecordModelCard) -> None:
        self.module = module.eval()
        self.card = card

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Logits ``(batch, n_classes)`` of float32 inputs ``(batch, *card.input_shape)``."""
        x = np.asarray(
            model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input,
            dtype=np.float32,
        )
        if x.ndim == 2:
            x = x[None]
        if x.shape[1:] != self.card.input_shape:
            raise ValueError(
                f"model input must be (batch, *{self.card.input_shape}), got {x.shape}"
            )
        n = x.shape[0]
        mask = np.ones((n, len(self.card.leads)), dtype=np.float32)
        demo = encode_demographics([None] * n, [None] * n)
        with torch.inference_mode():
            return self.module(
                torch.from_numpy(np.ascontiguousarray(x)),
                torch.from_numpy(mask),
                torch.from_numpy(demo),
            ).numpy()


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> RecordPyfuncModel:
    """MLflow's entry point: the pyfunc model of a logged record model's data directory."""
    module, card = record_model_from_data_dir(data_path)
    return RecordPyfuncModel(module, card)


def load_heart_disease_predictor(
    model_uri: str, *, tracking_uri: str | None = None
) -> HeartDiseasePredictor | RecordPredictor:
    """The predictor of whichever heart-disease model ``model_uri`` holds.

    Downloads it once and dispatches on the loader its MLmodel file names: a record model
    (:func:`log_record_model`) gives a :class:`RecordPredictor`, an ECG weights model
    (:func:`models.predictor.log_ecg_model`) a
    :class:`models.predictor.HeartDiseasePredictor`. Neither path unpickles anything.

    Raises
    ------
    ValueError
        Neither kind (a pickled model, for instance), or an arrhythmia model.
    """
    import mlflow.artifacts

    from models.predictor import (
        HeartDiseasePredictor,
        models_uri_location,
    )

    if tracking_uri is not None and model_uri.startswith("models:/"):
        model_uri = models_uri_location(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="ecg-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking_uri
        )
        if is_record_model_dir(local):
            return record_predictor_from_model_dir(local)
        predictor = predictor_from_model_dir(local)
    if not isinstance(predictor, HeartDiseasePredictor):
        raise ValueError(f"{model_uri} is a {predictor.card.task!r} model, not a heart-disease one")
    return predictor
