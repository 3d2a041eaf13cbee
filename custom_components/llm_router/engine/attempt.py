"""One backend's attempt at a turn's request, under its deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import replace
import math
from typing import Protocol

from .errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BadResponse,
    CapabilityUnsupported,
    CutAtCap,
    OutOfTime,
    ReasoningTooLong,
)
from .models import (
    Capability,
    ChatRequest,
    ModelDetails,
    ReasoningDelta,
    ServerStats,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from .outcomes import Attempt, Decision, RouterEvent
from .predictor import Forecast, Hold
from .reasoning import ReasoningSplitter, Split
from .state import BackendState
from .stats import GenerationStats, StreamClock, summarize


class AttemptHost(Protocol):
    """What an attempt asks of the router."""

    async def model_details(self, state: BackendState) -> ModelDetails:
        """The backend's model details, fetched once."""

    def model_used(self, state: BackendState) -> None:
        """The server has just used the model."""

    def answered_late(self, state: BackendState) -> None:
        """A first token came after its deadline: the server answers after all."""


class AttemptTurn(Protocol):
    """What an attempt reads of its turn."""

    @property
    def host(self) -> AttemptHost:
        """The router."""

    @property
    def request(self) -> ChatRequest:
        """The request as asked."""

    @property
    def deadline(self) -> float:
        """When the turn's time runs out (loop time)."""


class BackendAttempt:
    """Streaming one request from one backend, under its deadlines.

    Its first-token budget starts when it starts, after the model load the
    forecast expects: waiting for a slot comes out of it, a load does not.
    Missing it does not end the attempt: the turn counts the miss and starts
    the next backend beside it (see Turn), and it may still answer until the
    turn's deadline. When that is what cuts it off, it is the turn's fault,
    unless its own deadline had passed before.
    """

    def __init__(
        self,
        turn: AttemptTurn,
        state: BackendState,
        predicted: Forecast,
        decision: Decision,
    ) -> None:
        self._host = turn.host
        self.state = state
        self.forecast = predicted
        self.decision = decision
        self._request = turn.request
        self._turn_deadline = turn.deadline
        self.started = asyncio.get_running_loop().time()
        self.first_deadline = min(
            self.started + predicted.load + state.config.first_token_timeout,
            self._turn_deadline,
        )
        """By when its first token is due (loop time), the expected load after."""
        self.overdue = False
        """Its first token was due and has not come: the miss is counted."""
        self.hedged = False
        self.hedge_not_before = 0.0
        self.answering = False
        self.queued = 0.0
        self.slot_seconds = 0.0
        self.first_word: float | None = None
        self._first_token = False
        self.reasoning_tokens = 0
        self._answer_pieces = 0
        self._without_thinking = False
        self.note: str | None = None
        self.stats: GenerationStats | None = None
        self._held: list[RouterEvent] = []
        self._server_stats: ServerStats | None = None
        """The stream's final statistics, once they came."""
        # In line from now on, so that the next turn sees this slot as taken.
        state.waiting += 1
        self._in_line = True
        self._events = self._run()
        self._pull: asyncio.Task[RouterEvent | None] | None = None

    def elapsed(self) -> float:
        """Seconds since the attempt started."""
        return asyncio.get_running_loop().time() - self.started

    def pull(self) -> asyncio.Task[RouterEvent | None]:
        """The pending request for the next event (one at a time)."""
        if self._pull is None:
            self._pull = asyncio.get_running_loop().create_task(self._next())
        return self._pull

    async def _next(self) -> RouterEvent | None:
        return await anext(self._events, None)

    @property
    def pulling(self) -> bool:
        """Whether a pulled event is pending (see pull)."""
        return self._pull is not None

    async def pull_here(self) -> None:
        """Take the next event, awaited in the caller's task: nothing to race."""
        event = await anext(self._events, None)
        assert event is not None  # a stream ends only after its answer
        self._held.append(event)

    def take(self, pull: asyncio.Task[RouterEvent | None]) -> None:
        """Take a pulled event: held until the answer starts."""
        self._pull = None
        event = pull.result()
        assert event is not None  # a stream ends only after its answer
        self._held.append(event)

    def take_held(self) -> list[RouterEvent]:
        """Events so far (reasoning, then the first answer piece)."""
        held, self._held = self._held, []
        return held

    def rest(self) -> AsyncIterator[RouterEvent]:
        """The events after the first answer piece."""
        return self._events

    async def close(self) -> None:
        """Stop the attempt: its stream is closed and its slot freed."""
        if self._pull is not None:
            self._pull.cancel()
            await asyncio.gather(self._pull, return_exceptions=True)
            self._pull = None
        await self._events.aclose()
        self._leave_line()

    def _leave_line(self) -> None:
        if self._in_line:
            self._in_line = False
            self.state.waiting -= 1

    def outcome(self, error: BackendError | None = None) -> Attempt:
        """The attempt as the turn reports it."""
        return Attempt(
            self.state.name,
            None if error is None else error.kind,
            None if error is None else error.message,
            stats=self.stats if error is None else None,
            seconds=self.elapsed(),
            decision=self.decision,
            forecast=self.forecast,
            first_word=self.first_word,
            queued=self.queued,
            note=self.note,
        )

    def missed(self) -> BackendError:
        """What it means that the first token is overdue: busy, or silent."""
        if self._in_line:
            return BackendBusy("busy with other requests")
        first_token = self.state.config.first_token_timeout
        return BackendTimeout(f"no first token within {first_token:g} s")

    def _late(self, limit: float) -> BackendError:
        """The error for a deadline: the backend's, unless the turn's was first."""
        if limit >= self._turn_deadline:
            return OutOfTime("the turn's time ran out")
        return self.missed()

    async def _run(self) -> AsyncGenerator[RouterEvent]:  # noqa: PLR0915 (one frame per chunk)
        """A slot, the model's details, then the answer's events.

        Asked again at once where that helps: without a feature the model
        refused, or without thinking once reasoning hit its bound. One
        generator for all of it: each layer would cost every chunk a step.
        """
        state = self.state
        loop = asyncio.get_running_loop()
        hold = await self._take_slot()
        try:
            await self._know_model()
            stall = state.config.stall_timeout
            turn_deadline = self._turn_deadline
            while True:
                request = self._adapt()
                splitter, cap, reasoning_until = self._plan(request)
                clock = StreamClock(started=loop.time())
                self._server_stats = None
                # Until the first token, the turn watches its own deadline.
                limit = turn_deadline
                stream = state.backend.chat(request)
                watchdog = _Watchdog(stall)
                try:
                    try:
                        while True:
                            watchdog.arm(limit)
                            try:
                                event = await anext(stream)
                            except StopAsyncIteration:
                                break
                            except asyncio.CancelledError:
                                if not watchdog.expired():
                                    raise
                                raise self._timed_out(
                                    clock, limit, reasoning_until
                                ) from None
                            finally:
                                watchdog.disarm()
                            if type(event) is TextDelta and splitter.passes(event.text):
                                # Most chunks: answer text, passed as it is.
                                self._token(clock, loop.time())
                                self._answer_pieces += 1
                                yield event
                            else:
                                for out in self._events_of(event, splitter, clock):
                                    yield out
                            if cap is not None and self._answer_pieces >= cap:
                                self._server_stats = ServerStats(
                                    output_chunks=self._answer_pieces, cut_at_cap=True
                                )
                                break
                            # The next part is due within a stall of now
                            # (after the consumer took this one), and
                            # reasoning within its bound.
                            if clock.first_token is not None:
                                limit = min(loop.time() + stall, turn_deadline)
                                if not self.answering:
                                    limit = min(limit, reasoning_until)
                    finally:
                        watchdog.stop()
                        await stream.aclose()
                    for out in self._split_events(splitter.flush()):
                        yield out
                    self._finish(clock)
                    return
                except (CapabilityUnsupported, ReasoningTooLong, CutAtCap) as err:
                    if not self._ask_again(request, err):
                        raise
        finally:
            self._free_slot(hold)

    async def _take_slot(self) -> Hold:
        """Wait in line for one of the server's slots, until the turn's deadline."""
        state = self.state
        try:
            if state.slots.locked():  # else taken at once: no timer needed
                async with asyncio.timeout_at(self._turn_deadline):
                    await state.slots.acquire()
            else:
                await state.slots.acquire()
        except TimeoutError:
            raise self._late(self.first_deadline) from None
        finally:
            self._leave_line()
        taken = asyncio.get_running_loop().time()
        self.queued = taken - self.started
        hold = Hold(taken, state.latency.expected_hold(self.forecast))
        state.holding.append(hold)
        return hold

    def _free_slot(self, hold: Hold) -> None:
        state = self.state
        state.holding.remove(hold)
        self.slot_seconds = asyncio.get_running_loop().time() - hold.since
        state.slots.release()

    async def _know_model(self) -> None:
        """Fetch the model's details once, within the turn's deadline."""
        if self.state.details is not None:  # known: no timer needed
            return
        try:
            async with asyncio.timeout_at(self._turn_deadline):
                await self._host.model_details(self.state)
        except TimeoutError:
            raise self._late(self.first_deadline) from None

    def _ask_again(self, sent: ChatRequest, err: BackendError) -> bool:
        """Whether to ask again at once: without a refused feature, or thinking."""
        if isinstance(err, CapabilityUnsupported):
            return self._without_feature(sent, err)
        return self._ask_without_thinking(sent, err)

    def _without_feature(self, sent: ChatRequest, err: CapabilityUnsupported) -> bool:
        """Whether to ask again at once without a feature the model refused."""
        capability = Capability(err.capability)
        # What was sent, not what is known now: another turn may have learnt
        # it meanwhile.
        used = sent.think if capability is Capability.THINKING else sent.tools
        if self.answering or not used:
            return False
        self.state.unsupported.add(capability)  # learnt the hard way
        return True

    def _plan(
        self, request: ChatRequest
    ) -> tuple[ReasoningSplitter, int | None, float]:
        """A stream's reasoning splitter, answer cap and reasoning bound."""
        config = self.state.config
        # A thinking model behind a server that does not split reasoning out
        # may start without <think>: hold its output until </think> shows.
        splitter = ReasoningSplitter(
            expect_reasoning=bool(request.think)
            and not self.state.backend.splits_reasoning
        )
        if not request.think:
            return splitter, None, math.inf
        # The servers count reasoning in their cap: while thinking, none is
        # sent and the answer is counted here. Reasoning may go on until as
        # long before the turn's deadline as a first token may take: the
        # time to ask again without thinking.
        return (
            splitter,
            config.max_tokens,
            self._turn_deadline - config.first_token_timeout,
        )

    def _events_of(
        self, event: StreamEvent, splitter: ReasoningSplitter, clock: StreamClock
    ) -> Sequence[RouterEvent]:
        """What a stream event gives, other than text that passes as it is."""
        if isinstance(event, ServerStats):
            self._server_stats = event
            return ()
        self._token(clock, asyncio.get_running_loop().time())
        match event:
            case TextDelta():
                return self._split_events(splitter.feed(event.text))
            case ReasoningDelta():
                splitter.reasoning_handled_elsewhere()
                self.reasoning_tokens += 1
                return (event,)
            case ToolCallDelta():
                self.answering = True
                return (event,)

    def _ask_without_thinking(self, sent: ChatRequest, err: BackendError) -> bool:
        """Whether to ask again, without thinking, after reasoning hit its bound.

        Only before any answer word, and where the server can switch
        thinking off; its reasoning so far is dropped, never shown.
        """
        if self.answering or not sent.think or not self.state.backend.switches_thinking:
            return False
        self._without_thinking = True
        self._held.clear()
        self.note = f"{err.message}; asked again without thinking"
        return True

    def _adapt(self) -> ChatRequest:
        """The request as this backend's model can take it."""
        state = self.state
        request = self._request
        think = (
            self.forecast.think
            and state.supports(Capability.THINKING)
            and not self._without_thinking
        )
        if request.tools and not state.supports(Capability.TOOLS):
            request = request.without_tools()
        return request if request.think is think else replace(request, think=think)

    def _timed_out(
        self, clock: StreamClock, limit: float, reasoning_until: float
    ) -> BackendError:
        """Which deadline passed: the first token's, reasoning's, the turn's, a stall's."""
        if clock.first_token is None:
            return self._late(self.first_deadline)
        if limit == reasoning_until:
            seconds = asyncio.get_running_loop().time() - clock.started
            return ReasoningTooLong(
                f"reasoned for {seconds:.0f} s without an answer word"
            )
        if limit >= self._turn_deadline:
            return OutOfTime("the turn's time ran out")
        return BackendTimeout(f"stalled for {self.state.config.stall_timeout:g} s")

    def _finish(self, clock: StreamClock) -> None:
        """Judge a stream that ended; keep its statistics if it answered."""
        server_stats = self._server_stats
        if server_stats is None:
            raise BadResponse("the answer ended early")
        if server_stats.cut_at_cap and not self.answering:
            raise CutAtCap(
                "stopped at the token cap "
                + ("while reasoning, " if self.reasoning_tokens else "")
                + "before any answer word"
            )
        if not self.answering:
            raise BadResponse("empty answer")
        self.stats = summarize(server_stats, clock, asyncio.get_running_loop().time())

    def awaits_first_token(self) -> bool:
        """Whether its first token is still to come, and not yet overdue."""
        return not (self._first_token or self.overdue)

    def _token(self, clock: StreamClock, now: float) -> None:
        if clock.first_token is None:
            self._first_token = True
            self._host.model_used(self.state)
            if self.overdue:
                self._host.answered_late(self.state)
        clock.token(now)

    def _split_events(self, split: Split) -> list[RouterEvent]:
        events: list[RouterEvent] = []
        reasoning, answer = split.reasoning, split.answer
        if reasoning:
            self.reasoning_tokens += 1
            events.append(ReasoningDelta(reasoning))
        if answer:
            if self.first_word is None:
                self.first_word = asyncio.get_running_loop().time() - self.started
            self.answering = True
            self._answer_pieces += 1
            events.append(TextDelta(answer))
        return events


class _Watchdog:
    """Deadlines for the awaits of one stream, with one timer between them.

    A timeout per chunk costs a timer per chunk, and a wrapper a coroutine:
    here each await is armed with its limit (which only moves the deadline;
    the timer, when it fires early, waits on) and disarmed after. The
    awaiting task may change from one await to the next (a race's task,
    then the turn's), so it is noted at each.

    The first timer is set no later than a stall from now, where the limit
    of a streaming answer will be: a stream's limits then need no timer
    but that one.
    """

    def __init__(self, stall: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._stall = stall
        self._limit = 0.0
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def arm(self, limit: float) -> None:
        """The await that follows ends by limit (loop time), cancelled."""
        self._limit = limit
        self._task = asyncio.current_task()
        timer = self._timer
        if timer is None:
            first = min(limit, self._loop.time() + self._stall)
            self._timer = self._loop.call_at(first, self._fire)
        elif timer.when() > limit:
            timer.cancel()
            self._timer = self._loop.call_at(limit, self._fire)

    def expired(self) -> bool:
        """Whether the limit cancelled the await (then it is no cancel)."""
        task = self._task
        return self._expired and task is not None and not task.uncancel()

    def disarm(self) -> None:
        """The await is over."""
        self._task = None
        self._expired = False

    def _fire(self) -> None:
        self._timer = None
        if self._task is None:
            return  # between awaits: the next one sets the timer again
        if self._loop.time() < self._limit:
            self._timer = self._loop.call_at(self._limit, self._fire)
            return
        self._expired = True
        self._task.cancel()

    def stop(self) -> None:
        """No more awaits: drop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
