"""Micro-batching: single-segment arrhythmia requests that arrive together share one forward pass.

A request adds its segment to a pending list and waits. The first one of a batch schedules the
batch to run on the next turn of the event loop, so the requests whose bodies were read in the
same turn (concurrent clients) join it; no timer is involved, so a lone request waits for
nothing. The batch then runs like any prediction (:func:`service.inference.run_inference`: on the
event loop when small and the inference gate is free, in a worker thread otherwise) through one
:meth:`~models.predictor.ArrhythmiaPredictor.predict_many` call, whose beat-sequence model reads
all the strips in one forward pass. A batch that fails is re-run one segment at a time, so a bad
segment fails only its own request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from functools import partial

from models.predictor import ArrhythmiaPredictor, BeatPredictions
from models.segment import Segment
from service.inference import Gate, run_inference
from service.settings import ServiceSettings

__all__ = ["StripBatcher", "predict_held"]

_Item = tuple[ArrhythmiaPredictor, Segment, "asyncio.Future[BeatPredictions]"]


def predict_held(
    held: Gate, predictor: ArrhythmiaPredictor, segments: Sequence[Segment]
) -> list[BeatPredictions]:
    """``predictor.predict_many(segments)`` holding ``held`` (the gate, or nothing if held)."""
    with held:
        return predictor.predict_many(segments)


class StripBatcher:
    """Coalesces concurrent single-segment predictions (one per event-loop turn).

    Parameters
    ----------
    settings : ServiceSettings
        ``inline_max_samples``: a larger segment runs on its own, and a batch larger than it
        runs in the thread pool.
    gate : threading.BoundedSemaphore
        The inference gate every prediction holds while it runs.
    """

    def __init__(self, settings: ServiceSettings, gate: threading.BoundedSemaphore) -> None:
        self.settings = settings
        self.gate = gate
        self._pending: list[_Item] = []
        #: Batches run and segments in them (read by the tests).
        self.batches = 0
        self.segments = 0

    async def predict(self, predictor: ArrhythmiaPredictor, segment: Segment) -> BeatPredictions:
        """The predictions of one segment, computed with whatever arrived with it.

        Raises
        ------
        ValueError
            What :meth:`~models.predictor.ArrhythmiaPredictor.predict_many` raises for this
            segment alone (e.g. :class:`~models.segment.SegmentError`).
        """
        if segment.signal.size > self.settings.inline_max_samples:  # large: on its own
            (only,) = await self._predict(predictor, [segment])
            return only
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BeatPredictions] = loop.create_future()
        self._pending.append((predictor, segment, future))
        if len(self._pending) == 1:
            loop.call_soon(self._start_batch)
        return await future

    async def predict_all(
        self, predictor: ArrhythmiaPredictor, segments: Sequence[Segment]
    ) -> list[BeatPredictions]:
        """:meth:`predict` of several segments (the parts of one record), batched together.

        Raises
        ------
        ValueError
            The first segment's error, if any segment fails.
        """
        answers = await asyncio.gather(
            *(self.predict(predictor, segment) for segment in segments), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers  # type: ignore[return-value]  # no exceptions left

    def _start_batch(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._run(batch))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _predict(
        self, predictor: ArrhythmiaPredictor, segments: list[Segment]
    ) -> list[BeatPredictions]:
        return await run_inference(
            partial(predict_held, predictor=predictor, segments=segments),
            sum(s.signal.size for s in segments),
            self.settings,
            self.gate,
        )

    async def _run(self, batch: list[_Item]) -> None:
        by_model: dict[int, list[_Item]] = {}
        for item in batch:  # a model reload may fall between two requests of one batch
            by_model.setdefault(id(item[0]), []).append(item)
        for items in by_model.values():
            try:
                results = await self._predict(items[0][0], [segment for _, segment, _ in items])
            except Exception as err:
                if len(items) == 1:
                    _settle(items[0][2], error=err)
                    continue
                for predictor, segment, future in items:  # find the culprit: one at a time
                    try:
                        (only,) = await self._predict(predictor, [segment])
                    except Exception as one_err:
                        _settle(future, error=one_err)
                    else:
                        _settle(future, result=only)
                continue
            self.batches += 1
            self.segments += len(items)
            for (_, _, future), result in zip(items, results, strict=True):
                _settle(future, result=result)


def _settle(
    future: asyncio.Future[BeatPredictions],
    result: BeatPredictions | None = None,
    error: BaseException | None = None,
) -> None:
    """Hand a request its answer unless it gave up waiting (client gone)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
