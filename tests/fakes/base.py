"""Shared machinery of the loopback protocol fakes.

A fake is a real aiohttp server on 127.0.0.1 with a random port. Each chat
request takes the next scripted Reply (or the default one) and is recorded,
so tests assert on what the client really sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
import ipaddress
import json
import math
from pathlib import Path
import socket
import ssl
import tempfile
from typing import Any, Self

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Reply:
    """How the fake answers one chat request.

    text and thinking are streamed word by word (whitespace kept), at
    tokens_per_second when set, otherwise as fast as possible.
    """

    text: str = "Hello from the fake."
    thinking: str = ""
    # Inline reasoning: wraps `thinking` in <think>...</think> inside the text
    # stream instead of the protocol's reasoning field. "open" omits the
    # opening tag, as R1 chat templates do.
    inline_think: bool | str = False
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tokens_per_second: float | None = None
    # Error reply: HTTP status and body, sent instead of a stream.
    status: int = 200
    error: str | None = None
    # Seconds to wait after the request before the first byte; math.inf
    # never answers (the connection stays open).
    stall_before_first: float = 0.0
    # Seconds to stall after this many chunks (math.inf: forever).
    stall_after_chunks: int | None = None
    stall_seconds: float = math.inf
    # Close the connection after this many chunks, without the final chunk.
    drop_after_chunks: int | None = None
    # Send one malformed chunk after this many chunks.
    malformed_after_chunks: int | None = None
    # Stop after this many pieces with done_reason "length", as a server at
    # a token limit of its own does.
    length_after: int | None = None
    # Usage numbers the server reports (None: derived from the text).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Server-side durations in seconds (Ollama eval/prompt_eval durations,
    # llama.cpp timings). None: derived from the pacing.
    prompt_seconds: float | None = None
    generation_seconds: float | None = None
    load_seconds: float | None = None


@dataclass(frozen=True)
class Endless:
    """A response that never ends: the status and head, then a byte every
    dribble seconds, or silence (None), for as long as the client reads.
    """

    status: int = 200
    head: bytes = b""
    dribble: float | None = None

    async def send(self, request: web.Request) -> web.StreamResponse:
        """Answer request this way (returns only when the client is gone)."""
        response = web.StreamResponse(
            status=self.status, headers={"Content-Type": "application/json"}
        )
        await response.prepare(request)
        await response.write(self.head)
        while True:
            await asyncio.sleep(math.inf if self.dribble is None else self.dribble)
            await response.write(b" ")


def words(text: str) -> list[str]:
    """Split text into stream pieces that join back to exactly text."""
    pieces: list[str] = []
    for index, word in enumerate(text.split(" ")):
        pieces.append(word if index == 0 else " " + word)
    return [piece for piece in pieces if piece]


def answer_pieces(reply: Reply) -> tuple[list[str], list[str]]:
    """The reply's reasoning and text as stream pieces.

    With inline_think the reasoning moves into the text between tags and the
    reasoning list is empty.
    """
    thinking = words(reply.thinking)
    if not (reply.inline_think and thinking):
        return thinking, words(reply.text)
    opening = [] if reply.inline_think == "open" else ["<think>"]
    return [], [*opening, *thinking, "</think>", *words(reply.text)]


def free_port() -> int:
    """A loopback TCP port where nothing listens right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


@contextmanager
def unanswered_url() -> Iterator[str]:
    """A loopback URL where connecting never completes (connect timeouts).

    The listen backlog is full and nothing accepts, so the kernel ignores
    further connection attempts.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        address = server.getsockname()
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(address)
            yield f"http://127.0.0.1:{address[1]}"
        finally:
            for filler in fillers:
                filler.close()


def self_signed_tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """TLS contexts for 127.0.0.1: a server's, and a client's that trusts it.

    The certificate is self-signed and fresh, so default clients reject it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


class FakeServer:
    """Base of the fakes: lifecycle, reply queue, request log."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.replies: deque[Reply] = deque()
        self.default_reply = Reply()
        self.requests: list[dict[str, Any]] = []
        # Paths answered with an Endless response instead of the handler.
        self.endless: dict[str, Endless] = {}
        # Picks the reply from the request body, for concurrent requests.
        self.choose_reply: Callable[[Any], Reply] | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Serve HTTPS with this context when set before start().
        self.ssl_context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next chat requests, in order."""
        self.replies.extend(replies)

    async def record(self, request: web.Request) -> Any:
        """Log a request (method, path, auth headers, body) and return its body.

        The body is parsed JSON, the raw text when it is not JSON, or None.
        It is also kept as request["body"] for the handlers.
        """
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": {
                    name: request.headers[name]
                    for name in ("Authorization", "Content-Type")
                    if name in request.headers
                },
                "body": body,
                # The client's end of the connection: the same one again
                # means the connection was kept.
                "peer": request.transport.get_extra_info("peername")
                if request.transport
                else None,
            }
        )
        request["body"] = body
        return body

    async def endless_response(self, request: web.Request) -> web.StreamResponse | None:
        """The Endless response scripted for this request's path, if any."""
        endless = self.endless.get(request.path)
        return None if endless is None else await endless.send(request)

    def next_reply(self, body: Any) -> Reply:
        """The reply for the chat request being served.

        choose_reply picks it when set; else the next scripted one, else the
        default.
        """
        if self.choose_reply is not None:
            return self.choose_reply(body)
        return self.replies.popleft() if self.replies else self.default_reply

    async def start(self, port: int = 0) -> None:
        """Listen on a loopback port (0: a random free one)."""
        # Handlers of stalled replies end with their connection, not linger.
        self._runner = web.AppRunner(
            self.app, shutdown_timeout=0.1, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", port, ssl_context=self.ssl_context
        )
        await site.start()
        if self.ssl_context is not None:
            _ignore_refused_handshakes(asyncio.get_running_loop())
        server = site._server  # aiohttp keeps the socket here
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop listening and drop open connections (including stalled ones)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _ignore_refused_handshakes(loop: asyncio.AbstractEventLoop) -> None:
    """Let clients that distrust the fake's certificate hang up quietly.

    asyncio reports a TLS handshake the client aborted to the loop's
    exception handler, which fails Home Assistant's tests; for a fake whose
    certificate is meant to be rejected, it is the expected outcome.
    """
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ConnectionResetError | ssl.SSLError):
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handler)


async def paced(
    reply: Reply, chunks: list[Any], send: Callable[[Any], Awaitable[None]]
) -> AsyncIterator[int]:
    """Send chunks with the reply's pacing, stalls and drops.

    Yields the index of each chunk before sending it, so the caller can
    inject malformed data; raises ConnectionResetError to drop.
    """
    if reply.stall_before_first:
        await asyncio.sleep(reply.stall_before_first)
    delay = 1 / reply.tokens_per_second if reply.tokens_per_second else 0.0
    for index, chunk in enumerate(chunks):
        if reply.drop_after_chunks is not None and index == reply.drop_after_chunks:
            raise ConnectionResetError
        if reply.stall_after_chunks is not None and index == reply.stall_after_chunks:
            await asyncio.sleep(reply.stall_seconds)
        yield index
        if delay and index:
            await asyncio.sleep(delay)
        await send(chunk)
