"""Micro-batching: concurrent single-segment requests share one predict_many call."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import wfdb

from models.predictor import ArrhythmiaPredictor, BeatPredictions
from models.segment import Segment, SegmentError
from service.batcher import StripBatcher
from service.settings import ServiceSettings

EXCERPT = Path(__file__).resolve().parents[1] / "fixtures" / "mitdb_excerpt" / "mitdb" / "1.0.0"


def _strips(n: int) -> list[Segment]:
    """``n`` 10-s MLII strips at 360 Hz: the shipped MIT-BIH excerpt's records, then rescaled."""
    out = []
    for record in ("100", "114", "118"):
        rec = wfdb.rdrecord(str(EXCERPT / record))
        x = rec.p_signal[:, rec.sig_name.index("MLII")].astype(np.float32)
        out.append(Segment(x[:, None], 360.0, ("MLII",)))
    out += [Segment(s.signal * 0.5, 360.0, ("MLII",)) for s in out]
    return out[:n]


def _same(a: BeatPredictions, b: BeatPredictions) -> None:
    np.testing.assert_array_equal(a.r_peaks, b.r_peaks)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-5, atol=1e-6)
    assert a.beat_verdicts == b.beat_verdicts


async def _together(batcher: StripBatcher, predictor: ArrhythmiaPredictor, segments: list[Segment]):
    return await asyncio.gather(
        *(batcher.predict(predictor, s) for s in segments), return_exceptions=True
    )


def test_concurrent_segments_share_one_call_and_get_their_own_answers(
    arrhythmia_predictor: ArrhythmiaPredictor,
) -> None:
    predictor = arrhythmia_predictor
    segments = _strips(4)
    batcher = StripBatcher(ServiceSettings(), threading.BoundedSemaphore(1))
    answers = asyncio.run(_together(batcher, predictor, segments))
    assert (batcher.batches, batcher.segments) == (1, 4)
    for segment, answer in zip(segments, answers, strict=True):
        assert isinstance(answer, BeatPredictions)
        _same(answer, predictor.predict_many([segment])[0])


def test_a_bad_segment_fails_only_its_own_request(
    arrhythmia_predictor: ArrhythmiaPredictor,
) -> None:
    predictor = arrhythmia_predictor
    good = _strips(2)
    short = Segment(good[0].signal[:10], 360.0, ("MLII",))  # shorter than one beat window
    batcher = StripBatcher(ServiceSettings(), threading.BoundedSemaphore(1))
    answers = asyncio.run(_together(batcher, predictor, [good[0], short, good[1]]))
    assert isinstance(answers[1], SegmentError)
    for segment, answer in zip(good, (answers[0], answers[2]), strict=True):
        assert isinstance(answer, BeatPredictions)
        _same(answer, predictor.predict_many([segment])[0])


def test_large_segments_and_a_lone_request_run_alone(
    arrhythmia_predictor: ArrhythmiaPredictor,
) -> None:
    predictor = arrhythmia_predictor
    segments = _strips(2)
    batcher = StripBatcher(ServiceSettings(inline_max_samples=1000), threading.BoundedSemaphore(1))
    answers = asyncio.run(_together(batcher, predictor, segments))  # 3600 > 1000: each alone
    assert batcher.batches == 0 and all(isinstance(a, BeatPredictions) for a in answers)
    lone = StripBatcher(ServiceSettings(), threading.BoundedSemaphore(1))
    asyncio.run(_together(lone, predictor, segments[:1]))
    assert (lone.batches, lone.segments) == (1, 1)


def test_predict_all_batches_a_record_s_segments_and_raises_the_first_error(
    arrhythmia_predictor: ArrhythmiaPredictor,
) -> None:
    segments = _strips(3)
    batcher = StripBatcher(ServiceSettings(), threading.BoundedSemaphore(1))
    answers = asyncio.run(batcher.predict_all(arrhythmia_predictor, segments))
    assert (batcher.batches, batcher.segments) == (1, 3)
    for segment, answer in zip(segments, answers, strict=True):
        _same(answer, arrhythmia_predictor.predict_many([segment])[0])
    short = Segment(segments[0].signal[:10], 360.0, ("MLII",))
    with pytest.raises(SegmentError):
        asyncio.run(batcher.predict_all(arrhythmia_predictor, [segments[0], short]))
