"""A trained beat-sequence model with everything it needs to classify raw strips.

``BeatClassifier`` bundles the weights, the :class:`~models.beat_sequence.BeatSequenceConfig`
(with its calibration temperature), the preprocessing and context configurations and the decision
rule chosen on validation, and answers for one raw single-lead strip: the path the service calls
and the one the DS2 evaluation uses.

Saved layout (a directory): ``weights.pt`` (state dict) and ``config.json`` with keys ``model``,
``context``, ``preprocess`` and ``decision_offsets`` (log-offsets added to the calibrated log
probabilities before the argmax, per class; missing classes get 0).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.beat_context import BeatContextConfig, beat_context
from models.beat_sequence import (
    BeatSequenceConfig,
    BeatSequenceModel,
    model_inputs,
    predict_strips,
)
from models.preprocessing import PreprocessConfig

__all__ = ["BeatClassifier"]


@dataclass
class BeatClassifier:
    """Classify the beats of raw strips (N, S, V; F reported as V, Q never predicted).

    Attributes
    ----------
    model : BeatSequenceModel
    preprocess : PreprocessConfig
    context : BeatContextConfig
    decision_offsets : dict of str to float
        Added to ``log P(class)`` before the argmax (0 for classes not named).
    """

    model: BeatSequenceModel
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    context: BeatContextConfig = field(default_factory=BeatContextConfig)
    decision_offsets: dict[str, float] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.config.classes

    def predict_proba(self, signal: np.ndarray, fs: float, r_peaks: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for each beat of a strip.

        Parameters
        ----------
        signal : np.ndarray
            Raw ``(n_samples,)`` ECG in mV at ``fs`` Hz (10 s or longer works; see
            :mod:`models.beat_context` for how the first beats of a strip are referenced).
        fs : float
            Sampling rate in Hz.
        r_peaks : np.ndarray
            ``(n_beats,)`` sorted R-peak sample indices at ``fs``.

        Returns
        -------
        np.ndarray
            float32 ``(n_beats, len(self.classes))``.
        """
        return self.predict_proba_many([(signal, fs, r_peaks)])[0]

    def predict_proba_many(
        self, strips: Sequence[tuple[np.ndarray, float, np.ndarray]]
    ) -> list[np.ndarray]:
        """:meth:`predict_proba` of several strips, their beats read in one forward pass.

        Parameters
        ----------
        strips : sequence of (signal, fs, r_peaks)
            As :meth:`predict_proba` takes them; rates and lengths may differ.

        Returns
        -------
        list of np.ndarray
            Per strip, float32 ``(n_beats, len(self.classes))``.
        """
        inputs = []
        for signal, fs, r_peaks in strips:
            ctx = beat_context(signal, fs, r_peaks, self.preprocess, self.context)
            inputs.append(
                model_inputs(ctx.waves, ctx.features, ctx.feature_names, self.model.config)
            )
        return predict_strips(self.model, inputs)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class index per beat from ``(n_beats, k)`` probabilities, by the validation's rule."""
        off = np.array([self.decision_offsets.get(c, 0.0) for c in self.classes])
        return (np.log(np.maximum(probs, 1e-12)) + off).argmax(axis=1)

    def save(self, directory: Path) -> None:
        """Write ``weights.pt`` and ``config.json`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / "weights.pt")
        cfg = {
            "model": self.model.config.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "context": self.context.to_dict(),
            "decision_offsets": self.decision_offsets,
        }
        (directory / "config.json").write_text(json.dumps(cfg, indent=1))

    @classmethod
    def load(cls, directory: Path) -> BeatClassifier:
        """Read what :meth:`save` wrote.

        Raises
        ------
        FileNotFoundError
            If ``config.json`` or ``weights.pt`` is missing.
        """
        cfg = json.loads((directory / "config.json").read_text())
        model = BeatSequenceModel(BeatSequenceConfig.from_dict(cfg["model"]))
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return cls(
            model=model,
            preprocess=PreprocessConfig.from_dict(cfg.get("preprocess", {})),
            context=BeatContextConfig.from_dict(cfg.get("context", {})),
            decision_offsets={k: float(v) for k, v in cfg.get("decision_offsets", {}).items()},
        )
