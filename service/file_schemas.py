"""Response bodies of the file endpoints: the JSON endpoints' answers plus what the file held.

:class:`FileArrhythmiaResponse` is an :class:`~service.schemas.ArrhythmiaResponse` (every beat,
counts, model) with the decoded record's description, the lead the beats were read from and,
on request, that lead's samples (for drawing). :class:`FileHeartDiseaseResponse` is a
:class:`~service.schemas.HeartDiseaseResponse` for the record's first window (what the JSON
endpoint answers for the same record) plus one answer per further window of a longer record.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.schemas import ArrhythmiaResponse, HeartDiseaseResponse, HeartDiseaseResult

__all__ = [
    "FileArrhythmiaResponse",
    "FileHeartDiseaseResponse",
    "HeartDiseaseWindow",
    "RecordInfo",
]


class RecordInfo(BaseModel):
    """What the service read from the uploaded file(s)."""

    format: str = Field(description="wfdb, edf, csv or binary.")
    name: str | None = Field(default=None, description="Record or file name.")
    fs: float = Field(description="Sampling rate of the record, Hz.")
    leads: list[str] = Field(description="Lead names in the file's order.")
    n_samples: int
    duration_s: float
    annotated_beats: int | None = Field(
        default=None, description="Beats in the uploaded annotation file (.atr), if any."
    )


class FileArrhythmiaResponse(ArrhythmiaResponse):
    """Every beat of the chosen lead of an uploaded record."""

    record: RecordInfo
    lead: str = Field(description="The lead the beats were read from (MLII when present).")
    signal: list[float] | None = Field(
        default=None,
        description="That lead in mV at the record's rate, when include_signal=true.",
    )


class HeartDiseaseWindow(HeartDiseaseResult):
    """The answer for one model-length window of a record."""

    start_s: float
    end_s: float


class FileHeartDiseaseResponse(HeartDiseaseResponse):
    """Superclass probabilities of an uploaded multi-lead record.

    The top-level fields answer the first window (the model's length, 10 s for PTB-XL), as the
    JSON endpoint does; ``windows`` answers each consecutive window of a longer record.
    """

    record: RecordInfo
    windows: list[HeartDiseaseWindow]
