"""The beat-sequence model as a served arrhythmia model: logged without pickles, loaded by kind.

A trained :class:`models.beat_classifier.BeatClassifier` is logged as an MLflow pyfunc model
whose ``data/beatseq/`` directory holds its weights (safetensors, :mod:`models.weights`) and a
:class:`BeatSequenceCard` as JSON (``kind`` "beat-sequence", classes N/S/V with F merged into V,
the temperature inside the architecture, the decision offsets, the preprocessing and context
configurations). The MLmodel file names this module as its loader, so nothing is unpickled.

:func:`models.predictor.load_predictor` dispatches on that loader and returns a
:class:`BeatSequencePredictor`: an :class:`~models.predictor.ArrhythmiaPredictor` with the same
:class:`~models.predictor.BeatPredictions` answers and the same quality gating, whose per-beat
probabilities come from the whole strip read as a sequence.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from models.beat_classifier import BeatClassifier
from models.beat_context import BeatContextConfig
from models.beat_sequence import BeatSequenceConfig, BeatSequenceModel
from models.predictor import (
    PIP_REQUIREMENTS,
    ArrhythmiaPredictor,
    BeatPredictions,
    beats_to_classify,
)
from models.preprocessing import PreprocessConfig
from models.segment import Segment
from models.tasks import TASK_ARRHYTHMIA, TaskName
from models.weights import CARD_FILE, WEIGHTS_FILE, load_weights, log_weights_model

__all__ = [
    "BEAT_MODEL_KIND",
    "BEAT_PYFUNC_LOADER_MODULE",
    "BeatSequenceCard",
    "BeatSequencePredictor",
    "beat_classifier_from_data_dir",
    "log_beat_model",
]

#: ``kind`` of a logged beat-sequence model's card (and of its registered versions' tag).
BEAT_MODEL_KIND: Final = "beat-sequence"
#: The loader module named by the MLmodel file of a beat-sequence model.
BEAT_PYFUNC_LOADER_MODULE: Final = "models.beat_predictor"


@dataclass(frozen=True)
class BeatSequenceCard:
    """What the service and the loader need to know of a beat-sequence model.

    Attributes
    ----------
    architecture : BeatSequenceConfig
        Includes the classes (N, S, V), the merged classes ({"F": "V"}) and the temperature.
    preprocess : PreprocessConfig
    context : BeatContextConfig
    decision_offsets : dict of str to float
        Validation's rule (added to log-probabilities before the argmax; 0 for classes not named).
    leads : tuple of str
        ("MLII",): the lead the model reads (a one-lead strip is read whatever its name).
    """

    architecture: BeatSequenceConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    context: BeatContextConfig = field(default_factory=BeatContextConfig)
    decision_offsets: dict[str, float] = field(default_factory=dict)
    leads: tuple[str, ...] = ("MLII",)
    task: TaskName = TASK_ARRHYTHMIA
    kind: str = BEAT_MODEL_KIND

    @property
    def classes(self) -> tuple[str, ...]:
        return self.architecture.classes

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(wave_len, wave_channels)``: one beat's waveform input at ``preprocess.fs_target``."""
        return (self.architecture.wave_len, self.architecture.wave_channels)

    @property
    def window_s(self) -> float:
        """Seconds of one beat window."""
        return self.preprocess.beat_before_s + self.preprocess.beat_after_s

    def to_metadata(self) -> dict[str, Any]:
        """JSON-able values (:meth:`from_metadata` reads them back)."""
        return {
            "kind": self.kind,
            "task": self.task,
            "classes": list(self.classes),
            "leads": list(self.leads),
            "architecture": self.architecture.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "context": self.context.to_dict(),
            "decision_offsets": dict(self.decision_offsets),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> BeatSequenceCard:
        """The card of :meth:`to_metadata`'s dict; ValueError when it is not one."""
        if meta.get("kind") != BEAT_MODEL_KIND:
            raise ValueError(f"model card kind is {meta.get('kind')!r}, not {BEAT_MODEL_KIND!r}")
        try:
            return cls(
                architecture=BeatSequenceConfig.from_dict(meta["architecture"]),
                preprocess=PreprocessConfig.from_dict(meta["preprocess"]),
                context=BeatContextConfig.from_dict(meta["context"]),
                decision_offsets={k: float(v) for k, v in meta["decision_offsets"].items()},
                leads=tuple(meta["leads"]),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"beat-sequence model card: missing or bad {err}") from err


def card_of(clf: BeatClassifier) -> BeatSequenceCard:
    """The card of a trained classifier."""
    return BeatSequenceCard(
        architecture=clf.model.config,
        preprocess=clf.preprocess,
        context=clf.context,
        decision_offsets=dict(clf.decision_offsets),
    )


def log_beat_model(
    clf: BeatClassifier, *, name: str = "model", registered_model_name: str | None = None
) -> Any:
    """Log ``clf`` into the active MLflow run: safetensors weights + card JSON, no pickle.

    ``registered_model_name`` also creates a new version of that registered model.

    Returns
    -------
    mlflow.models.model.ModelInfo
    """

    card = card_of(clf)
    return log_weights_model(
        clf.model,
        card.to_metadata(),
        name=name,
        loader_module=BEAT_PYFUNC_LOADER_MODULE,
        data_dir_name="beatseq",
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_model_name,
    )


def beat_classifier_from_data_dir(data_dir: str | Path) -> tuple[BeatClassifier, BeatSequenceCard]:
    """Rebuild the classifier from a logged model's data directory (nothing executed).

    Raises
    ------
    ValueError
        Missing or malformed card, or weights that are not safetensors or do not fit.
    """
    data_dir = Path(data_dir)
    try:
        meta = json.loads((data_dir / CARD_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{data_dir / CARD_FILE}: no readable model card ({err})") from err
    card = BeatSequenceCard.from_metadata(meta)
    model = load_weights(BeatSequenceModel(card.architecture), data_dir / WEIGHTS_FILE)
    assert isinstance(model, BeatSequenceModel)
    model.eval()
    clf = BeatClassifier(
        model=model,
        preprocess=card.preprocess,
        context=card.context,
        decision_offsets=dict(card.decision_offsets),
    )
    return clf, card


class BeatSequencePredictor(ArrhythmiaPredictor):
    """An arrhythmia predictor whose beat probabilities come from :class:`BeatClassifier`.

    Same checks, quality gating and :class:`BeatPredictions` as
    :class:`~models.predictor.ArrhythmiaPredictor`; the classifier reads every detected beat of a
    strip (its RR context counts unreadable neighbours too) and only readable beats keep their
    probabilities (calibrated by the model's temperature).
    """

    def __init__(self, classifier: BeatClassifier, card: BeatSequenceCard) -> None:
        self.classifier = classifier
        self.module = classifier.model.eval()
        self.card = card  # type: ignore[assignment]  # same fields the service reads

    def predict_many(
        self, segments: Sequence[Segment], *, assess_quality: bool = True
    ) -> list[BeatPredictions]:
        """Per-beat N/S/V probabilities of each segment (see ArrhythmiaPredictor.predict_many)."""
        leads = [self.lead_of(seg, i) for i, seg in enumerate(segments)]
        n_classes = len(self.card.classes)
        judged = [
            beats_to_classify(lead, seg, assess_quality=assess_quality)
            for lead, seg in zip(leads, segments, strict=True)
        ]
        # Every strip with a readable beat goes through one forward pass.
        todo = [i for i, (_, keep, _) in enumerate(judged) if keep.any()]
        probs = self.classifier.predict_proba_many(
            [(leads[i], segments[i].fs, np.asarray(judged[i][0], dtype=np.int64)) for i in todo]
        )
        by_strip = dict(zip(todo, probs, strict=True))
        out = []
        for i, (peaks, keep, quality) in enumerate(judged):
            rows = np.full((len(peaks), n_classes), np.nan, dtype=np.float32)
            if i in by_strip:
                rows[keep] = by_strip[i][keep]
            out.append(
                BeatPredictions(np.asarray(peaks, dtype=np.int64), rows, self.card.classes, quality)
            )
        return out


def beat_predictor_from_data_dir(data_dir: str | Path) -> BeatSequencePredictor:
    """The predictor of a logged beat-sequence model's data directory."""
    clf, card = beat_classifier_from_data_dir(data_dir)
    return BeatSequencePredictor(clf, card)


class BeatPyfuncModel:
    """``mlflow models serve``: N/S/V probabilities of ``{"signal", "fs", "r_peaks"}``."""

    def __init__(self, classifier: BeatClassifier) -> None:
        self.classifier = classifier

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """float32 ``(n_beats, 3)`` N/S/V probabilities of one strip."""
        if hasattr(model_input, "to_dict"):
            model_input = {k: v[0] for k, v in model_input.to_dict(orient="list").items()}
        try:
            signal = np.asarray(model_input["signal"], dtype=np.float64)
            fs = float(model_input["fs"])
            peaks = np.asarray(model_input["r_peaks"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"input must hold signal, fs and r_peaks: {err}") from err
        return self.classifier.predict_proba(signal, fs, peaks)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> BeatPyfuncModel:
    """MLflow's entry point."""
    return BeatPyfuncModel(beat_classifier_from_data_dir(data_path)[0])
