"""Environment-dependent settings of the inference service, read once through :func:`get_settings`.

Nothing here is read at import time: :func:`service.main.create_app` asks for the settings when the
app is built, and the lifespan uses them when it starts. The preprocessing of the signals is NOT a
setting: it travels with each model (its :class:`models.predictor.ModelCard`).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServiceSettings", "get_settings"]


class ServiceSettings(BaseSettings):
    """Read from ``ECG_SERVICE_*`` environment variables (or a ``.env`` file).

    Attributes
    ----------
    mlflow_tracking_uri : str or None
        Tracking and registry URI. None: the standard ``MLFLOW_TRACKING_URI`` if set, else MLflow's
        default.
    arrhythmia_model, heart_disease_model : str
        Registered model names; an empty string switches that model off (not loaded, not
        required by ``/ready``).
    model_alias : str
        Alias served for both models (``champion``).
    reload_interval_s : float
        Poll the registry every this many seconds and load a model whose alias moved; 0 = off
        (``POST /admin/reload`` still works).
    api_key : SecretStr or None
        When set, the predict and admin endpoints require header ``X-API-Key`` with this value.
    max_body_bytes : int
        Larger request bodies get 413 (checked from Content-Length and while reading).
    max_signal_seconds : float
        Longest accepted signal, seconds (per segment / record).
    max_batch_items : int
        Most segments or records in one batch request.
    max_concurrent_inference : int
        Requests whose preprocessing and forward pass may run at once (default 1); the others
        wait their turn. On a small CPU, concurrent numpy/torch work in threads contends for the
        cores and the GIL: serialising it measured 110 -> 118 req/s for single strips from 4
        clients and 190 -> 297 strips/s for 16-strip batches (bench.serving, one run each).
    torch_threads : int
        ``torch.set_num_threads`` at start-up; 0 leaves torch's default. One thread per request
        suits small recurrent models served to concurrent clients.
    inline_max_samples : int
        A prediction request of at most this many samples (all leads and items) runs on the
        event loop when the inference gate is free, not in a worker thread
        (:mod:`service.inference`); 0 sends every request to the thread pool. The default,
        65,536, is about 3 min of one lead at 360 Hz: tens of milliseconds of CPU at most.
    """

    model_config = SettingsConfigDict(env_prefix="ECG_SERVICE_", env_file=".env", extra="ignore")

    mlflow_tracking_uri: str | None = None
    arrhythmia_model: str = "ecg-arrhythmia"
    heart_disease_model: str = "ecg-heart-disease"
    model_alias: str = "champion"
    reload_interval_s: float = Field(default=0.0, ge=0.0)
    api_key: SecretStr | None = None
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_signal_seconds: float = Field(default=600.0, gt=0.0)
    max_batch_items: int = Field(default=64, ge=1)
    torch_threads: int = Field(default=1, ge=0)
    max_concurrent_inference: int = Field(default=1, ge=1)
    inline_max_samples: int = Field(default=65_536, ge=0)


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` in tests)."""
    return ServiceSettings()
