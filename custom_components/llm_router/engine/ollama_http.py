"""The ollama client's HTTP, sent over the shared aiohttp session.

The official client speaks the protocol; this transport carries its
requests. aiohttp parses HTTP in C (httpx's default transport, in Python,
costs a turn about 0.4 ms more), shares the session's pool of
connections, and resolves names as the session does. It also bounds what
the client reads, which the client would read whole: an error body is cut
after MAX_ERROR_BODY (only its message is used), a chat stream may not go
MAX_LINE bytes without a line break, and any other answer (model lists,
details) may not exceed MAX_METADATA.

aiohttp's errors pass through as they are: the backend maps them.
"""

from __future__ import annotations

from abc import abstractmethod
import asyncio
import ssl
from typing import Self

import aiohttp
import httpx
from yarl import URL

from .errors import BadResponse
from .limits import KIB, MAX_ERROR_BODY, MAX_LINE, MAX_METADATA

# Set by aiohttp from the body it sends.
_SENT_BY_AIOHTTP = frozenset({"content-length", "transfer-encoding"})


class SessionTransport(httpx.AsyncBaseTransport):
    """httpx requests sent with an aiohttp session (never closed here).

    Only connecting has a timeout: the router enforces first-token and stall
    deadlines, and bounds the other calls.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        verify: ssl.SSLContext | bool,
        connect_timeout: float,
    ) -> None:
        self._session = session
        self._verify = verify
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request; the body is read as the client iterates it."""
        # A scheduling point first, as httpx's own transport has one: turns
        # that start together (an automation asking many at once) take turns
        # at the event loop, instead of holding it for all their sends at once.
        await asyncio.sleep(0)
        response = await self._session.request(
            request.method,
            URL(str(request.url), encoded=True),  # as httpx encoded it
            headers=[
                (name, value)
                for name, value in request.headers.multi_items()
                if name.lower() not in _SENT_BY_AIOHTTP
            ],
            data=await request.aread() or None,
            # httpx follows redirects and decodes what it asked to be encoded.
            allow_redirects=False,
            auto_decompress=False,
            timeout=self._timeout,
            ssl=self._verify,
        )
        body: _Body
        if response.status >= 400:
            body = _ErrorBody(response)
        elif request.url.path.endswith("/api/chat"):
            body = _ChatLines(response)
        else:
            body = _Metadata(response)
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=body,
            request=request,
        )


class _Body(httpx.AsyncByteStream):
    """A response's body as httpx reads it: chunks as they arrive, checked.

    An iterator, not a generator: no frame of its own between the socket
    and the client. _seen: what the check counts.
    """

    __slots__ = ("_content", "_response", "_seen")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content
        self._seen = 0

    def __aiter__(self) -> Self:
        return self

    @abstractmethod
    async def __anext__(self) -> bytes:
        """The next chunk, checked; StopAsyncIteration at the end."""

    async def aclose(self) -> None:
        """Back to the pool if read to the end; else the connection is closed."""
        self._response.release()


class _ChatLines(_Body):
    """A chat stream, whose lines may not exceed MAX_LINE bytes."""

    __slots__ = ()

    async def __anext__(self) -> bytes:
        chunk = await self._content.readany()
        if not chunk:
            raise StopAsyncIteration
        end = chunk.rfind(b"\n")
        # The bytes of the line under way.
        self._seen = self._seen + len(chunk) if end < 0 else len(chunk) - end - 1
        if self._seen > MAX_LINE:
            raise BadResponse(f"stream line longer than {MAX_LINE // KIB} KiB")
        return chunk


class _Metadata(_Body):
    """A whole answer of at most MAX_METADATA bytes."""

    __slots__ = ()

    async def __anext__(self) -> bytes:
        chunk = await self._content.readany()
        if not chunk:
            raise StopAsyncIteration
        self._seen += len(chunk)
        if self._seen > MAX_METADATA:
            raise BadResponse(f"answer larger than {MAX_METADATA // KIB} KiB")
        return chunk


class _ErrorBody(_Body):
    """An error body, cut after MAX_ERROR_BODY bytes."""

    __slots__ = ()

    async def __anext__(self) -> bytes:
        left = MAX_ERROR_BODY - self._seen
        chunk = await self._content.readany() if left > 0 else b""
        if not chunk:
            raise StopAsyncIteration
        self._seen += len(chunk)
        return chunk[:left]
