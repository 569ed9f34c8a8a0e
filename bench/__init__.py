"""Benchmarks behind the README's figures (long: not part of the test run)."""

from __future__ import annotations

from pathlib import Path

_SHARED_ROOT = Path(__file__).resolve().parents[2] / "shared" / "physionet"


def default_raw_root() -> Path:
    """This machine's PhysioNet mirror (``../shared/physionet``) when there is one, else the
    pipeline's raw data directory (``ECG_RAW_DIR``, default ``data/raw``)."""
    if (_SHARED_ROOT / "mitdb").is_dir():
        return _SHARED_ROOT
    from pipeline.settings import get_settings

    return get_settings().raw_dir
