"""The ``mlflow.pyfunc`` loader of ECG models: ``mlflow models serve``, ``pyfunc.load_model``.

:func:`models.predictor.log_ecg_model` names this module (by import path) as the
``loader_module`` of the MLmodel file's ``python_function`` flavour. MLflow imports it from the
installed package and calls :func:`_load_pyfunc` with the model's data directory; the module is
rebuilt from the card's architecture and its safetensors weights, nothing is unpickled. The pyfunc
model maps float32 model inputs ``(batch, *card.input_shape)`` to logits
``(batch, n_classes)``, as the signature logged with the model says.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from models.predictor import ModelCard, model_from_data_dir

__all__ = ["EcgPyfuncModel"]


class EcgPyfuncModel:
    """Logits of an ECG model for ready-made model inputs (what the pyfunc ``predict`` serves)."""

    def __init__(self, module: nn.Module, card: ModelCard) -> None:
        self.module = module.eval()
        self.card = card

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Logits ``(batch, n_classes)`` of float32 inputs ``(batch, *card.input_shape)``."""
        x = np.asarray(
            model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input,
            dtype=np.float32,
        )
        if x.ndim == 2:  # one input without its batch axis
            x = x[None]
        if x.shape[1:] != self.card.input_shape:
            raise ValueError(
                f"model input must be (batch, {self.card.input_shape[0]}, "
                f"{self.card.input_shape[1]}), got {x.shape}"
            )
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> EcgPyfuncModel:
    """MLflow's entry point: the pyfunc model of a logged model's data directory."""
    module, card = model_from_data_dir(data_path)
    return EcgPyfuncModel(module, card)
