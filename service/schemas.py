"""Request and response bodies of the inference API (pydantic v2).

Signals are JSON arrays of samples in millivolts at ``fs`` Hz: one lead ``[x0, x1, ...]`` for the
arrhythmia model, ``[[lead0, lead1, ...], ...]`` rows of shape ``(n_samples, n_leads)`` for the
heart-disease model (the layout of wfdb's ``p_signal``). These models check the JSON's form
(types, ranges, rectangular rows); the signal's content (finite, R peaks, lead names) is checked
once by :class:`models.segment.Segment`, what the loaded model needs by its predictor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FS_MAX_HZ",
    "FS_MIN_HZ",
    "MAX_ABS_MV",
    "ArrhythmiaBatchRequest",
    "ArrhythmiaBatchResponse",
    "ArrhythmiaRequest",
    "ArrhythmiaResponse",
    "ArrhythmiaResult",
    "ArrhythmiaSummary",
    "BeatOut",
    "ErrorItem",
    "ErrorResponse",
    "HealthResponse",
    "HeartDiseaseBatchRequest",
    "HeartDiseaseBatchResponse",
    "HeartDiseaseRequest",
    "HeartDiseaseResponse",
    "HeartDiseaseResult",
    "ModelInfo",
    "ModelRef",
    "ModelStatus",
    "ModelsResponse",
    "ReadyResponse",
    "ReloadOutcome",
    "ReloadResponse",
    "SegmentQuality",
    "UnavailableModel",
]

#: Accepted input sampling rates, Hz (the model's own rate comes from its card).
FS_MIN_HZ = 100.0
FS_MAX_HZ = 1000.0
#: Samples beyond +-1 V are not ECG in millivolts (microvolts or ADC units, most likely).
MAX_ABS_MV = 1000.0

Sample = Annotated[float, Field(ge=-MAX_ABS_MV, le=MAX_ABS_MV, allow_inf_nan=False)]
SamplingRate = Annotated[
    float,
    Field(
        ge=FS_MIN_HZ,
        le=FS_MAX_HZ,
        multiple_of=0.5,
        allow_inf_nan=False,
        description="Sampling rate of `signal` in Hz, 100-1000, a multiple of 0.5 Hz.",
    ),
]
_STRICT = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- errors
class ErrorItem(BaseModel):
    """One problem with a request: where (``loc``) and what (``msg``)."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: ``detail`` says in one line what was wrong and what to do."""

    detail: str
    errors: list[ErrorItem] | None = None


# --------------------------------------------------------------------------- shared
class ModelRef(BaseModel):
    """Which registered model version answered."""

    name: str
    version: str
    alias: str
    run_id: str | None = None


# --------------------------------------------------------------------------- arrhythmia
class ArrhythmiaRequest(BaseModel):
    """One single-lead ECG segment (MLII-like), from one beat window (~0.7 s) to minutes long."""

    model_config = _STRICT

    fs: SamplingRate
    signal: list[Sample] = Field(
        min_length=1, description="One lead, raw samples in mV at `fs` Hz."
    )
    r_peaks: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Optional R-peak sample indices (strictly increasing, < len(signal); checked with the "
            "signal by the service's segment). "
            "Omit to detect the beats (the service's Pan-Tompkins detector, models/rpeaks.py)."
        ),
    )


class ArrhythmiaBatchRequest(BaseModel):
    """Several segments, classified through one forward pass."""

    model_config = _STRICT

    segments: list[ArrhythmiaRequest] = Field(min_length=1)


QualityVerdict = Literal["good", "noisy", "unreadable"]
_QUALITY_REASONS = (
    "Names of the failed quality checks, most frequent first: flat (flat line), clipped "
    "(saturation), qrs_amp_mv (QRS amplitude out of range), hum (50/60 Hz powerline), ksqi "
    "(kurtosis, Li et al. 2008), psqi (QRS-band power share), bassqi (baseline wander, Zhao & "
    "Zhang 2018), bsqi (two QRS detectors disagree), tcorr (beats unlike their template, "
    "Orphanidou et al. 2015), hr_bpm / max_rr_s (implausible rate or pause), no_beats, "
    "beat_amplitude, local_noise."
)


class BeatOut(BaseModel):
    """One beat: its class, or none when the signal around it is unreadable."""

    sample: int = Field(description="R-peak index at the input rate.")
    time_s: float = Field(description="R-peak time from the start of the segment, seconds.")
    label: str | None = Field(
        description=(
            "Most probable class among the model's classes (N, S, V; F is merged into V by the "
            "beat-sequence model; older models also answer F and Q); null when the beat is "
            "unreadable."
        )
    )
    probabilities: dict[str, float] | None = Field(
        description="Calibrated class probabilities; null when the beat is unreadable."
    )
    quality: QualityVerdict = Field(
        default="good",
        description=(
            "Signal quality around the beat: good, noisy (classified, but doubtful) or "
            "unreadable (not classified). Every beat of an unreadable segment is unreadable."
        ),
    )
    quality_reasons: list[str] = Field(default_factory=list, description=_QUALITY_REASONS)


class SegmentQuality(BaseModel):
    """Signal quality of the whole segment (models.quality.assess_strip)."""

    verdict: QualityVerdict = Field(
        description=(
            "good; noisy (some windows or beats doubtful); unreadable (no beats, or more than "
            "half of them unreadable: no beat is classified, `reasons` says why)."
        )
    )
    reasons: list[str] = Field(default_factory=list, description=_QUALITY_REASONS)
    n_unreadable_beats: int = Field(description="Beats left unclassified.")


class ArrhythmiaSummary(BaseModel):
    """Counts per class over the segment's classified beats."""

    n_beats: int = Field(description="All beats found, classified or not.")
    counts: dict[str, int] = Field(description="Classified beats per class.")
    abnormal_fraction: float | None = Field(
        description="Share of classified beats not classified N; null when none was classified."
    )


class ArrhythmiaResult(BaseModel):
    """Beats, quality and summary of one segment."""

    n_samples: int
    duration_s: float
    r_peaks_source: Literal["given", "detected"]
    quality: SegmentQuality
    beats: list[BeatOut]
    summary: ArrhythmiaSummary
    warnings: list[str] = Field(default_factory=list)


class ArrhythmiaResponse(ArrhythmiaResult):
    """Answer for one segment."""

    model: ModelRef


class ArrhythmiaBatchResponse(BaseModel):
    """Answers for several segments, in request order."""

    model: ModelRef
    results: list[ArrhythmiaResult]


# --------------------------------------------------------------------------- heart disease
HeartDiseaseSex = Literal["male", "female"]


class HeartDiseaseRequest(BaseModel):
    """One multi-lead record (10 s), any subset of the 12 standard leads for the record model.

    The record model (the champion's card kind ``record-model``) reads any subset of I, II, III,
    aVR, aVL, aVF, V1-V6 and optionally the patient's age and sex; older heart-disease models
    need all 12 leads and ignore age and sex.
    """

    model_config = _STRICT

    fs: SamplingRate
    leads: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(
        min_length=1,
        max_length=16,
        description="Lead names in column order (matched case-insensitively), e.g. I, II, V1.",
    )
    signal: list[Annotated[list[Sample], Field(min_length=1, max_length=16)]] = Field(
        min_length=1,
        description="Rows of shape (n_samples, n_leads): one row per sample, one column per lead.",
    )
    age: float | None = Field(
        default=None, ge=0, le=130, description="Age in years (used together with sex)."
    )
    sex: HeartDiseaseSex | None = Field(
        default=None, description="male or female (used together with age)."
    )

    @model_validator(mode="after")
    def _rectangular(self) -> HeartDiseaseRequest:
        """Rows of one width, so that the body is an array (its content: models.segment)."""
        width = len(self.leads)
        bad = next((i for i, row in enumerate(self.signal) if len(row) != width), None)
        if bad is not None:
            raise ValueError(
                f"signal must be (n_samples, n_leads) = (n, {width}) for leads {self.leads}; "
                f"row {bad} has {len(self.signal[bad])} values"
            )
        return self


class HeartDiseaseBatchRequest(BaseModel):
    """Several records, one forward pass."""

    model_config = _STRICT

    records: list[HeartDiseaseRequest] = Field(min_length=1)


class HeartDiseaseResult(BaseModel):
    """Superclass probabilities of one record (multi-label: they need not sum to 1)."""

    probabilities: dict[str, float]
    heart_disease_probability: float = Field(description="1 - P(NORM).")
    heart_disease: bool | None = Field(
        default=None,
        description=(
            "The yes/no decision: heart_disease_probability >= threshold, the operating point "
            "chosen on validation records for this lead set; null for models without one."
        ),
    )
    threshold: float | None = Field(
        default=None, description="Decision threshold on heart_disease_probability."
    )
    labels: list[str] = Field(description="Superclasses with probability >= 0.5.")
    leads_used: list[str] = Field(
        default_factory=list, description="The leads the model read, in its order."
    )
    reduced_leads: bool = Field(
        default=False,
        description="Fewer leads than the model's 12: the answer is less certain.",
    )
    demographics_used: bool = Field(
        default=False, description="Age and sex were given and read by the model."
    )
    warnings: list[str] = Field(default_factory=list)


class HeartDiseaseResponse(HeartDiseaseResult):
    """Answer for one record."""

    model: ModelRef


class HeartDiseaseBatchResponse(BaseModel):
    """Answers for several records, in request order."""

    model: ModelRef
    results: list[HeartDiseaseResult]


# --------------------------------------------------------------------------- operations
class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ModelStatus(BaseModel):
    """Load state of one configured model."""

    task: str
    name: str
    alias: str
    loaded: bool
    version: str | None = None
    error: str | None = Field(default=None, description="Why no model is loaded.")
    last_reload_error: str | None = Field(
        default=None, description="The latest failed load; the previous version keeps serving."
    )
    last_reload_at: datetime | None = None


class ReadyResponse(BaseModel):
    ready: bool
    models: list[ModelStatus]


class ModelInfo(BaseModel):
    """A served model version, its card and the test metrics of its training run."""

    task: str
    name: str
    alias: str
    version: str
    run_id: str | None
    source: str
    loaded_at: datetime
    classes: list[str]
    leads: list[str]
    model_fs_hz: float = Field(description="Rate the model works at; inputs are resampled to it.")
    accepted_fs_hz: tuple[float, float] = (FS_MIN_HZ, FS_MAX_HZ)
    input_shape: list[int]
    preprocess: dict[str, object]
    architecture: dict[str, object]
    test_metrics: dict[str, float]


class UnavailableModel(BaseModel):
    task: str
    name: str
    alias: str
    error: str | None


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    unavailable: list[UnavailableModel]


class ReloadOutcome(BaseModel):
    task: str
    name: str
    alias: str
    previous_version: str | None
    version: str | None
    changed: bool
    error: str | None = None


class ReloadResponse(BaseModel):
    ok: bool
    outcomes: list[ReloadOutcome]
