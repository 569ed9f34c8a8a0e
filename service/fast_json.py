"""Request bodies decoded by pydantic-core's JSON parser instead of the standard library's.

FastAPI decodes a JSON body with ``json.loads`` before pydantic validates it. For a 10-s strip
(3,600 floats) that took 1.1 ms against 0.15 ms for ``pydantic_core.from_json`` and was the largest
single item in the service's profile (bench/SERVING.md). :class:`FastJSONRoute` swaps the parser
for the routes of one router; a body the fast parser refuses is decoded again by ``json.loads``,
so malformed bodies get exactly the errors (and HTTP answers) they got before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["FastJSONRequest", "FastJSONRoute"]


class FastJSONRequest(Request):
    """A request whose :meth:`json` parses with ``pydantic_core.from_json``."""

    async def json(self) -> Any:
        """The decoded body (cached); the stdlib's own error for a body that is not JSON."""
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError:
                self._json = json.loads(body)  # raises the error FastAPI maps to its answer
        return self._json


class FastJSONRoute(APIRoute):
    """An API route whose handler sees a :class:`FastJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(FastJSONRequest(request.scope, request.receive))

        return route_handler
