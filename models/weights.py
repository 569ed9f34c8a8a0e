"""A model's weights as data: a ``state_dict`` in a safetensors file, never a pickle.

safetensors stores named tensors and a JSON header, nothing executable, so reading a file from
the model registry cannot run code whoever wrote it put there (a pickled ``nn.Module`` or a
``torch.load`` without ``weights_only`` can). The module itself is rebuilt from the architecture
its model card names (:mod:`models.predictor`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "CARD_FILE",
    "WEIGHTS_FILE",
    "WeightsError",
    "load_weights",
    "log_weights_model",
    "save_weights",
]

#: File name of the weights inside a logged model's data directory.
WEIGHTS_FILE = "weights.safetensors"
#: The model card inside a logged model's data directory (next to :data:`WEIGHTS_FILE`).
CARD_FILE = "card.json"


class WeightsError(ValueError):
    """A weights file is missing, not safetensors, or does not fit the architecture."""


def save_weights(module: nn.Module, path: str | Path) -> Path:
    """Write ``module.state_dict()`` to ``path`` (safetensors); return the path."""
    from safetensors.torch import save_file

    state = {name: t.detach().cpu().contiguous() for name, t in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return Path(path)


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load the safetensors ``state_dict`` at ``path`` into ``module`` (strictly); return it.

    Raises
    ------
    WeightsError
        When the file is missing or is not a safetensors file (a pickle, for instance: it is
        refused, never unpickled), or when its tensors do not match ``module``'s parameters.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing; re-log the model")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"{path} is not a safetensors weights file ({err}); refusing to load it: models are "
            "read from safetensors only, never unpickled"
        ) from err
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path} does not fit the model card's architecture: {err}") from err
    return module.eval()


def log_weights_model(
    module: nn.Module,
    card: dict[str, Any],
    *,
    name: str,
    loader_module: str,
    data_dir_name: str = "ecg",
    **log_model_kwargs: Any,
) -> Any:
    """Log ``module`` into the active MLflow run as weights + card, with no pickle and no code.

    The data directory (``data/<data_dir_name>/`` in the logged model) holds
    :data:`WEIGHTS_FILE` and :data:`CARD_FILE`; ``loader_module`` is the installed module MLflow
    imports by name to load it. ``log_model_kwargs`` go to ``mlflow.pyfunc.log_model``
    (signature, input example, pip requirements, registered model name).

    Returns
    -------
    mlflow.models.model.ModelInfo
    """
    import mlflow

    with tempfile.TemporaryDirectory(prefix="ecg-model-") as tmp:
        data = Path(tmp) / data_dir_name  # MLflow keeps the name (the MLmodel file says so)
        data.mkdir()
        save_weights(module, data / WEIGHTS_FILE)
        (data / CARD_FILE).write_text(json.dumps(card, indent=2))
        return mlflow.pyfunc.log_model(
            name=name,
            loader_module=loader_module,
            data_path=str(data),
            metadata=card,
            **log_model_kwargs,
        )
