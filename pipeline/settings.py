"""Environment-dependent settings of the pipeline, read once through :func:`get_settings`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PHYSIONET_URL", "PipelineSettings", "get_settings"]

PHYSIONET_URL = "https://physionet.org/files/"


class PipelineSettings(BaseSettings):
    """Read from ``ECG_*`` environment variables (or a ``.env`` file).

    Attributes
    ----------
    data_dir : Path
        Root of ``raw/<db>/<version>/`` downloads and ``processed/<dataset>/`` datasets.
    physionet_url : str
        Base URL of PhysioNet or of a mirror laid out like it (``<base>/<db>/<version>/...``);
        ``file://`` URLs of a local copy work too.
    mlflow_tracking_uri : str or None
        Where runs and models go. None: ``MLFLOW_TRACKING_URI`` if set, else a local sqlite store
        ``sqlite:///mlflow.db`` with artifacts under ``mlartifacts/`` (what ``mlflow ui`` opens).
    """

    model_config = SettingsConfigDict(env_prefix="ECG_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    physionet_url: str = PHYSIONET_URL
    mlflow_tracking_uri: str | None = None
    mlflow_artifact_dir: Path = Path("mlartifacts")

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def processed_dir(self) -> Path:
        return self.data_dir / "processed"


@lru_cache(maxsize=1)
def get_settings() -> PipelineSettings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` in tests)."""
    return PipelineSettings()
