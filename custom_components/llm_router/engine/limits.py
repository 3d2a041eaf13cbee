"""Bounds on what the backends read from a server.

A broken or hostile server must not make Home Assistant hold unbounded
memory or spin on one endless answer.
"""

from __future__ import annotations

import aiohttp

from .errors import BadResponse

KIB = 1024
MAX_ERROR_BODY = 64 * KIB
"""An error body: only its message is kept, and that is short."""
MAX_METADATA = 1024 * KIB
"""A version, a model list: a few KiB on real servers."""
MAX_LINE = 1024 * KIB
"""One line of a stream: one chunk of an answer."""


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of a response, cut off after limit bytes."""
    body = bytearray()
    while len(body) < limit and (
        data := await response.content.read(limit - len(body))
    ):
        body += data
    return bytes(body)


async def read_whole(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of a response; BadResponse if it is longer than limit bytes."""
    body = await read_at_most(response, limit + 1)
    if len(body) > limit:
        raise BadResponse(f"answer larger than {limit // KIB} KiB")
    return body
