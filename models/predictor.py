"""What a trained ECG model is once it leaves training: logging it to MLflow and predicting with it.

A model travels as data, never as pickled code: an MLflow model whose ``data/`` directory holds its
weights (a ``state_dict`` in safetensors, :mod:`models.weights`) and its :class:`ModelCard` as JSON
(the task, the class names, the lead order, the architecture and the :class:`PreprocessConfig`;
also in the MLmodel file's ``metadata``). Loading rebuilds the module from the architecture the card
names and reads the weights into it, so whoever can write to the registry cannot make a loader run
code. Whoever loads it (the service, the evaluation code, a notebook) also rebuilds preprocessing
from that card, never from its own settings, so training and serving cannot drift apart.

For ``mlflow models serve`` the model is an ``mlflow.pyfunc`` model whose loader is the installed
module :mod:`models.mlflow_pyfunc`, named by import path in the MLmodel file (no ``python_model``
pickle, no code copied into the artifact).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from models.preprocessing import (
    PreprocessConfig,
    beat_inputs,
    detect_rpeaks,
    preprocess_signal,
)
from models.quality import GOOD, UNREADABLE, StripQuality, Verdict, assess_strip
from models.recurrent import RecurrentClassifier, RecurrentClassifierConfig
from models.segment import Segment, SegmentError
from models.tasks import TASK_ARRHYTHMIA, TaskName
from models.weights import CARD_FILE, WEIGHTS_FILE, load_weights, log_weights_model

__all__ = [
    "ArrhythmiaPredictor",
    "BeatPredictions",
    "HeartDiseasePredictor",
    "ModelCard",
    "beats_to_classify",
    "load_predictor",
    "log_ecg_model",
    "model_from_data_dir",
    "models_uri_location",
    "predictor_from_model_dir",
]

logger = logging.getLogger(__name__)


#: The loader module ``mlflow models serve`` imports (by name, from the installed package).
PYFUNC_LOADER_MODULE: Final = "models.mlflow_pyfunc"
#: What ``mlflow models serve`` needs besides this project's installed ``models`` package.
PIP_REQUIREMENTS: Final = [
    f"torch=={torch.__version__.split('+')[0]}",
    "numpy",
    "scipy",
    "wfdb",
    "safetensors",
]
#: Largest polyphase up/down factor accepted when resampling to the model's rate (cost guard).
MAX_RESAMPLE_FACTOR: Final = 2000
#: A heart-disease record must cover at least this share of the model's window.
MIN_RECORD_FRACTION: Final = 0.9


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

    task: TaskName
    classes: tuple[str, ...]
    leads: tuple[str, ...]
    preprocess: PreprocessConfig
    architecture: RecurrentClassifierConfig
    input_shape: tuple[int, int]

    @property
    def window_s(self) -> float:
        """Seconds of signal one model input covers (a record model reads the first this many)."""
        return self.input_shape[0] / self.preprocess.fs_target

    def to_metadata(self) -> dict[str, Any]:
        """The card as JSON-able values (:meth:`from_metadata` reads it back)."""
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
        """The card of :meth:`to_metadata`'s dict; ValueError when it is not one."""
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
    """Log ``model``'s weights and ``card`` into the active run, with signature and example.

    The artifact holds data only: ``data/ecg/weights.safetensors``, ``data/ecg/card.json`` and
    the MLmodel file, whose ``python_function`` flavour names :data:`PYFUNC_LOADER_MODULE` as its
    loader.

    Parameters
    ----------
    model : nn.Module
        A :class:`RecurrentClassifier` built from ``card.architecture``: takes float32
        ``(batch, *card.input_shape)``, returns ``(batch, len(card.classes))`` logits.
    card : ModelCard
        Stored as ``data/card.json`` and in the MLmodel file's ``metadata``.
    input_example : np.ndarray
        float32 ``(k, *card.input_shape)``: a few real inputs.
    registered_model_name : str, optional
        Also create a new version of this registered model.

    Returns
    -------
    mlflow.models.model.ModelInfo
    """
    from mlflow.models import infer_signature

    config = getattr(model, "config", None)
    if config != card.architecture:
        raise ValueError(
            f"the module's architecture {config} is not its card's {card.architecture}: the "
            "module must be a RecurrentClassifier built from card.architecture"
        )
    example = np.asarray(input_example, dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(example)).numpy()
    return log_weights_model(
        model,
        card.to_metadata(),
        name=name,
        loader_module=PYFUNC_LOADER_MODULE,
        signature=infer_signature(example, out),
        input_example=example,
        registered_model_name=registered_model_name,
        pip_requirements=PIP_REQUIREMENTS,
    )


@dataclass(frozen=True)
class BeatPredictions:
    """Per-beat answers for one single-lead segment, with the quality verdicts behind them.

    Attributes
    ----------
    r_peaks : np.ndarray
        int64 ``(n_beats,)`` sample indices at the input rate (the beats the quality check judged).
    probabilities : np.ndarray
        float32 ``(n_beats, n_classes)``; rows sum to 1 for classified beats and are NaN for the
        beats left unclassified (unreadable, or every beat of an unreadable strip).
    classes : tuple of str
    quality : StripQuality, optional
        The strip's :func:`models.quality.assess_strip` verdicts; None when not assessed.
    """

    r_peaks: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]
    quality: StripQuality | None = None

    @property
    def classified(self) -> np.ndarray:
        """bool ``(n_beats,)``: the beats the model labelled (finite probability rows)."""
        return np.isfinite(self.probabilities).all(axis=1)

    @property
    def labels(self) -> list[str | None]:
        """Most probable class of each beat; None for a beat left unclassified."""
        if not len(self.r_peaks):
            return []
        best = np.nan_to_num(self.probabilities, nan=-1.0).argmax(axis=1)
        return [
            self.classes[i] if ok else None for i, ok in zip(best, self.classified, strict=True)
        ]

    @property
    def strip_verdict(self) -> Verdict:
        """The strip's verdict: good, noisy or unreadable ("good" when not assessed)."""
        return GOOD if self.quality is None else self.quality.verdict

    @property
    def strip_reasons(self) -> tuple[str, ...]:
        """Why the strip is not good (quality index names), most frequent first."""
        return () if self.quality is None else self.quality.reasons

    @property
    def beat_verdicts(self) -> tuple[Verdict, ...]:
        """``(n_beats,)`` verdicts; every beat of an unreadable strip is unreadable."""
        n = len(self.r_peaks)
        if self.quality is None:
            return (GOOD,) * n
        if self.quality.verdict == UNREADABLE:
            return (UNREADABLE,) * n
        return self.quality.beat_verdicts

    @property
    def beat_reasons(self) -> tuple[tuple[str, ...], ...]:
        """``(n_beats,)`` reasons per beat; the strip's reasons for beats it made unreadable."""
        if self.quality is None:
            return ((),) * len(self.r_peaks)
        own = self.quality.beat_reasons
        if self.quality.verdict == UNREADABLE:
            return tuple(r or self.quality.reasons for r in own)
        return own


class _Predictor:
    def __init__(self, module: nn.Module, card: ModelCard) -> None:
        self.module = module.eval()
        self.card = card

    def _check(self, segment: Segment, min_seconds: float, index: int | None) -> None:
        """What this model needs of any segment: enough signal, a rate it can resample from."""
        if segment.n_samples < math.ceil(min_seconds * segment.fs - 1e-9):
            raise SegmentError(
                f"signal is {segment.duration_s:.3f} s ({segment.n_samples} samples at "
                f"{segment.fs} Hz); at least {min_seconds:.2f} s "
                f"({math.ceil(min_seconds * segment.fs)} samples) is needed",
                index,
            )
        fs_model = self.card.preprocess.fs_target
        ratio = Fraction(fs_model).limit_denominator(1000) / Fraction(segment.fs).limit_denominator(
            1000
        )
        if max(ratio.numerator, ratio.denominator) > MAX_RESAMPLE_FACTOR:
            raise SegmentError(
                f"fs={segment.fs} Hz cannot be resampled cheaply to the model's "
                f"{fs_model} Hz (ratio {ratio}); give fs as a whole number of Hz",
                index,
            )

    @torch.inference_mode()
    def _logits(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros((0, len(self.card.classes)), dtype=np.float32)
        return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def beats_to_classify(
    lead: np.ndarray, segment: Segment, *, assess_quality: bool = True
) -> tuple[np.ndarray, np.ndarray, StripQuality | None]:
    """The beats of one lead and which of them may be classified.

    Parameters
    ----------
    lead : np.ndarray
        ``(n_samples,)`` float32 in mV at ``segment.fs`` Hz.
    segment : Segment
        Gives the rate and the caller's R peaks, if any.
    assess_quality : bool
        Judge the strip first (:func:`models.quality.assess_strip`, whose R peaks are then the
        beats); when False every beat is classified (scoring on given peaks).

    Returns
    -------
    peaks : np.ndarray
        ``(n_beats,)`` sample indices.
    keep : np.ndarray
        ``(n_beats,)`` bool: readable beats of a strip that is not unreadable.
    quality : StripQuality or None
    """
    if not assess_quality:
        peaks = detect_rpeaks(lead, segment.fs) if segment.r_peaks is None else segment.r_peaks
        return np.asarray(peaks), np.ones(len(peaks), dtype=bool), None
    quality = assess_strip(lead, segment.fs, segment.r_peaks)
    keep = quality.readable & (quality.verdict != UNREADABLE)
    return quality.r_peaks, keep, quality


class ArrhythmiaPredictor(_Predictor):
    """Classify every beat of single-lead ECG segments into AAMI classes."""

    @property
    def min_seconds(self) -> float:
        """The shortest segment that holds one beat window."""
        return self.card.preprocess.beat_before_s + self.card.preprocess.beat_after_s

    def lead_of(self, segment: Segment, index: int | None = None) -> np.ndarray:
        """The lead this model reads, ``(n_samples,)``; checks the segment against the model.

        A one-lead segment is taken as that lead whatever its name; of several, the model's lead
        (``card.leads[0]``, MLII) is picked by name.

        Raises
        ------
        SegmentError
            Too short for one beat window, a rate that cannot be resampled cheaply, or a
            multi-lead segment without the model's lead.
        """
        self._check(segment, self.min_seconds, index)
        if segment.signal.shape[1] == 1:
            return segment.signal[:, 0]
        try:
            return segment.select(self.card.leads[:1])[:, 0]
        except SegmentError as err:
            raise SegmentError(str(err), index) from err

    def predict_many(
        self, segments: Sequence[Segment], *, assess_quality: bool = True
    ) -> list[BeatPredictions]:
        """Beats of several segments through one forward pass, after a quality check.

        Each segment's lead is first judged by :func:`models.quality.assess_strip` (which also
        detects the beats when none are given); unreadable beats, and every beat of an
        unreadable strip, are not classified (NaN probability rows). The RR context of the
        readable beats still counts their unreadable neighbours, as in training.

        Parameters
        ----------
        segments : sequence of Segment
            Raw ECG at any rate; ``segment.r_peaks`` given or None to detect the beats (wfdb
            XQRS). See :meth:`lead_of` for the lead read.
        assess_quality : bool
            False: classify every beat, no quality verdicts (how the pipeline scores a model on
            annotated beats).

        Raises
        ------
        SegmentError
            From :meth:`lead_of`, with the segment's position in ``index``.
        """
        leads = [self.lead_of(seg, i) for i, seg in enumerate(segments)]
        inputs, peaks_list, keep_list, qualities = [], [], [], []
        for lead, seg in zip(leads, segments, strict=True):
            peaks, keep, quality = beats_to_classify(lead, seg, assess_quality=assess_quality)
            peaks_list.append(peaks)
            keep_list.append(keep)
            qualities.append(quality)
            if keep.any():
                inputs.append(beat_inputs(lead, seg.fs, peaks, self.card.preprocess)[keep])
        x = np.concatenate(inputs, axis=0) if inputs else np.zeros((0, *self.card.input_shape))
        logits = self._logits(x)
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        out, start = [], 0
        n_classes = len(self.card.classes)
        for peaks, keep, quality in zip(peaks_list, keep_list, qualities, strict=True):
            rows = np.full((len(peaks), n_classes), np.nan, dtype=np.float32)
            n_kept = int(keep.sum())
            rows[keep] = probs[start : start + n_kept]
            start += n_kept
            out.append(BeatPredictions(peaks, rows, self.card.classes, quality))
        return out

    def predict(
        self,
        signal: np.ndarray,
        fs: float,
        r_peaks: np.ndarray | None = None,
        *,
        assess_quality: bool = True,
    ) -> BeatPredictions:
        """Beats of one raw ``(n_samples,)`` lead at ``fs`` Hz (see :meth:`predict_many`)."""
        segment = Segment.single_lead(signal, fs, self.card.leads[0], r_peaks)
        return self.predict_many([segment], assess_quality=assess_quality)[0]


class HeartDiseasePredictor(_Predictor):
    """Superclass probabilities for 12-lead records (multi-label, independent sigmoids)."""

    @property
    def min_seconds(self) -> float:
        """The shortest record accepted: :data:`MIN_RECORD_FRACTION` of the model's window."""
        return MIN_RECORD_FRACTION * self.card.window_s

    def record_inputs(self, segment: Segment, index: int | None = None) -> np.ndarray:
        """Model input ``card.input_shape`` of one raw record; checks it against the model.

        Leads are matched by name (case-insensitive) and reordered to the model's order; the
        record is cut to the model's window (:attr:`ModelCard.window_s`) before filtering and
        scaling, and edge-padded after them when it is shorter.

        Raises
        ------
        SegmentError
            Missing leads, too short, or a rate that cannot be resampled cheaply.
        """
        self._check(segment, self.min_seconds, index)
        try:
            x = segment.select(self.card.leads)
        except SegmentError as err:
            raise SegmentError(str(err), index) from err
        t = self.card.input_shape[0]
        # Cut the raw record to the model's duration first: training filtered and z-scored exactly
        # that much, and z-scoring a longer record would change the scale.
        x = x[: max(1, round(self.card.window_s * segment.fs))]
        y = preprocess_signal(x, segment.fs, self.card.preprocess)
        if y.shape[0] >= t:
            return y[:t]
        return np.pad(y, ((0, t - y.shape[0]), (0, 0)), mode="edge")

    def predict_many(self, records: Sequence[Segment]) -> np.ndarray:
        """Probabilities ``(n_records, n_classes)`` of several records, one forward pass."""
        x = np.stack([self.record_inputs(r, i) for i, r in enumerate(records)])
        return torch.sigmoid(torch.from_numpy(self._logits(x))).numpy()

    def heart_disease_probability(self, probabilities: np.ndarray) -> np.ndarray:
        """1 - P(NORM): the probability that a record is not a normal ECG, ``(n_records,)``."""
        return 1.0 - probabilities[:, self.card.classes.index("NORM")]


Predictor = ArrhythmiaPredictor | HeartDiseasePredictor


def model_from_data_dir(data_dir: str | Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild a logged model from its data directory: ``card.json`` + safetensors weights.

    The module is built from the architecture the card names and the weights are read into it;
    nothing in the directory is executed or unpickled.

    Raises
    ------
    ValueError
        When the card is missing or malformed, or the weights are not safetensors or do not fit
        (:class:`models.weights.WeightsError`).
    """
    data_dir = Path(data_dir)
    card_path = data_dir / CARD_FILE
    try:
        meta = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{card_path}: no readable model card ({err})") from err
    card = ModelCard.from_metadata(meta)
    module = load_weights(RecurrentClassifier(card.architecture), data_dir / WEIGHTS_FILE)
    return module, card


def predictor_from_model_dir(path: str | Path) -> Predictor:
    """Build the predictor of a local MLflow model directory (one holding an ``MLmodel`` file).

    Raises
    ------
    ValueError
        When the directory is not an ECG model logged by :func:`log_ecg_model` (for example one
        of the old pickled ``pytorch`` models: re-register it), or its files are bad.
    """
    from mlflow.models import Model

    pyfunc = Model.load(str(path)).flavors.get("python_function", {})
    if pyfunc.get("loader_module") == "models.beat_predictor" and pyfunc.get("data"):
        # A beat-sequence arrhythmia model (card kind "beat-sequence"): same predictor API.
        from models.beat_predictor import beat_predictor_from_data_dir

        beat_dir = (Path(path) / str(pyfunc["data"])).resolve()
        if not beat_dir.is_relative_to(Path(path).resolve()):
            raise ValueError(f"model at {path}: its data directory points outside the model")
        return beat_predictor_from_data_dir(beat_dir)
    if pyfunc.get("loader_module") != PYFUNC_LOADER_MODULE or not pyfunc.get("data"):
        raise ValueError(
            f"model at {path} is not an ECG weights model (its python_function loader is "
            f"{pyfunc.get('loader_module')!r}, expected {PYFUNC_LOADER_MODULE!r}); models logged "
            "as pickles are not loaded: retrain or re-log it with models.predictor.log_ecg_model"
        )
    data_dir = (Path(path) / str(pyfunc["data"])).resolve()
    if not data_dir.is_relative_to(Path(path).resolve()):
        raise ValueError(f"model at {path}: its data directory points outside the model")
    module, card = model_from_data_dir(data_dir)
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
        model_uri = models_uri_location(model_uri, tracking_uri)

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


def models_uri_location(model_uri: str, tracking_uri: str) -> str:
    """Storage location of ``models:/<name>/<version>``, ``@<alias>`` or ``models:/<model_id>``."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    parts = get_model_name_and_version(client, model_uri)
    if len(parts) == 1:
        return str(client.get_logged_model(parts[0]).artifact_location)
    return str(client.get_model_version_download_uri(parts[0], parts[1]))
