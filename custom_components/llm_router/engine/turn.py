"""One routed request: its attempts, the race between them, hedges, deadlines."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import suppress
from dataclasses import replace
import logging
import math
from typing import Protocol

from .attempt import AttemptHost, BackendAttempt
from .errors import BackendError, ErrorKind, Overtaken
from .models import ChatRequest
from .outcomes import AllBackendsFailed, Attempt, Decision, Interrupted, RouterEvent
from .predictor import Forecast, Forecasts
from .settings import RouterSettings
from .state import BackendState
from .stats import GenerationStats

_LOGGER = logging.getLogger(__name__)

# Outcomes the router makes itself: not the backend's failures.
NOT_FAILURES = frozenset({ErrorKind.BUSY, ErrorKind.OUT_OF_TIME, ErrorKind.CANCELLED})
WAKING = "waking up, asking the next backend"


class TurnHost(AttemptHost, Protocol):
    """What a turn asks of the router."""

    @property
    def settings(self) -> RouterSettings:
        """The router's settings."""

    @property
    def states(self) -> dict[str, BackendState]:
        """The backends, by name."""

    @property
    def hedge_line(self) -> list[Turn]:
        """Turns waiting for a backend to hedge onto."""

    def forecast(self, name: str, request: ChatRequest, now: float) -> Forecast:
        """Predicted time to the first answer word of a backend for request."""

    def candidates(
        self, only: str | None, forecasts: Mapping[str, Forecast]
    ) -> list[BackendState]:
        """Backends in the order the policy tries them."""

    def earlier_hedge_wants(self, turn: Turn, state: BackendState, now: float) -> bool:
        """Whether a turn that has waited longer would hedge onto state."""

    def record_success(self, state: BackendState, attempt: BackendAttempt) -> None:
        """Learn from an answer."""

    def record_failure(
        self, state: BackendState, error: BackendError, *, breaker: bool = True
    ) -> None:
        """Count a failure of the backend (and tell its breaker)."""

    def missed_deadline(self, state: BackendState, error: BackendError) -> None:
        """Tell the backend's breaker of a missed deadline."""

    def notify(self, names: Iterable[str]) -> None:
        """Tell the listeners that these backends' state changed."""


class Turn:
    """One routed request: iterate for events, then read the outcome."""

    def __init__(
        self, router: TurnHost, request: ChatRequest, *, only: str | None, spoken: bool
    ) -> None:
        self.host = router
        self.request = request
        self._only = only
        self._spoken = spoken
        self.attempts: list[Attempt] = []
        self.first_choice: str | None = None
        self.served_by: str | None = None
        self._served: Attempt | None = None
        self._pending: deque[BackendState] = deque()
        self._deferred: list[BackendState] = []
        self._open: list[BackendState] = []
        """Skipped for an open breaker: tried last, if worth a try."""
        self._woken: list[tuple[BackendState, Attempt]] = []
        """Backends this turn found down and woke, with their attempts."""
        self.started = 0.0
        """When the turn began (loop time)."""
        self.deadline = 0.0
        self._hedge_beat: float | None = None
        """While waiting to hedge: how soon a backend must answer to be worth it."""

    @property
    def fell_back(self) -> bool:
        """Whether a backend other than the first choice served the request."""
        return self.served_by is not None and self.served_by != self.first_choice

    @property
    def stats(self) -> GenerationStats | None:
        """Stats of the generation that served the request."""
        return self._served.stats if self._served else None

    @property
    def served(self) -> Attempt | None:
        """The attempt that served the request."""
        return self._served

    def __aiter__(self) -> AsyncIterator[RouterEvent]:
        return self._run()

    def _note(self, state: BackendState, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        state.recent_attempts.append(attempt)

    def _skip(
        self, state: BackendState, kind: ErrorKind, why: str, *, waking: bool = False
    ) -> None:
        attempt = Attempt(
            state.name, kind, why, decision=Decision.SKIPPED, waking=waking
        )
        self._note(state, attempt)
        if waking:
            self._woken.append((state, attempt))

    def _name_the_stand_in(self) -> None:
        """Waking attempts name the backend that answered in their stead.

        Which one does is known only once the turn is served, after the
        waking attempt was noted.
        """
        for state, waking in self._woken:
            named = replace(waking, error=f"waking, asked {self.served_by}")
            self.attempts[self.attempts.index(waking)] = named
            with suppress(ValueError):  # already pushed out of the last ten
                recent = state.recent_attempts
                recent[recent.index(waking)] = named

    async def _run(self) -> AsyncIterator[RouterEvent]:
        router = self.host
        now = self.started = asyncio.get_running_loop().time()
        self.deadline = now + router.settings.turn_timeout
        # Made when read; the first start uses them too.
        forecasts = Forecasts(lambda name: router.forecast(name, self.request, now))
        candidates = router.candidates(self._only, forecasts)
        ordered_by: Forecasts | None = forecasts
        self.first_choice = candidates[0].name if candidates else None
        self._pending = deque(candidates)
        racing: list[BackendAttempt] = []
        try:
            while True:
                if not racing:
                    attempt = self._start_next(forecasts=ordered_by)
                    ordered_by = None
                    if attempt is None:
                        raise AllBackendsFailed(self.attempts)
                    racing.append(attempt)
                winner = await self._race(racing)
                if winner is None:
                    continue
                if self._spoken:
                    # No fallback any more: the events pass straight through.
                    try:
                        for event in winner.take_held():
                            yield event
                        async for event in winner.rest():
                            yield event
                    except BackendError as err:
                        self._failed(winner, err)
                        # Spoken text cannot be taken back: end the turn here.
                        self.served_by = winner.state.name
                        yield Interrupted(winner.state.name, err)
                    else:
                        self._serve(winner)
                else:
                    answer = await self._complete(winner)
                    if answer is not None:
                        self._serve(winner)
                        for event in answer:
                            yield event
                racing.clear()
                if self.served_by is not None:
                    self._name_the_stand_in()
                    return
        finally:
            for attempt in racing:
                await attempt.close()
            router.notify(attempt.backend for attempt in self.attempts)

    def _start_next(
        self,
        *,
        beat: float | None = None,
        forecasts: Mapping[str, Forecast] | None = None,
    ) -> BackendAttempt | None:
        """Start the next backend to try, noting those passed over.

        A backend that is busy and expected to stay so beyond its budget is
        passed over while another may answer; it is asked last, in line.
        With beat, a hedge: the next backend that would answer at once and
        is expected to say its first word within beat seconds. With
        forecasts, those the backends were just ordered by.
        """
        router = self.host
        now = asyncio.get_running_loop().time()
        hedge = beat is not None
        for state in list(self._pending):
            predicted = (
                forecasts[state.name]
                if forecasts is not None
                else router.forecast(state.name, self.request, now)
            )
            if beat is not None and not (
                state.breaker.allows()
                and state.has_free_slot()
                and predicted.total <= beat
                and not router.earlier_hedge_wants(self, state, now)
            ):
                continue
            self._pending.remove(state)
            if not state.breaker.allows() or state.power.put_to_sleep:
                state.skipped += 1
                # Woken for the turns after this one: this one does not wait.
                waking = state.power.wake_on_demand()
                why = WAKING if waking else "skipped, not answering"
                self._skip(state, ErrorKind.CIRCUIT_OPEN, why, waking=waking)
                self._open.append(state)
                continue
            left = self.deadline - now
            if left <= 0:
                self._skip(state, ErrorKind.OUT_OF_TIME, "no time left in the turn")
                continue
            budget = min(state.config.first_token_timeout, left)
            if (
                predicted.queue > 0
                and predicted.total > budget
                and any(other.breaker.allows() for other in self._pending)
            ):
                self._deferred.append(state)
                wait = (
                    f"expected wait {predicted.queue:.1f} s"
                    if math.isfinite(predicted.queue)
                    else "with other requests"
                )
                self._skip(state, ErrorKind.BUSY, f"busy, {wait}")
                continue
            if hedge:
                decision = Decision.HEDGE
            elif state.name == self.first_choice:
                decision = Decision.FIRST_CHOICE
            else:
                decision = Decision.FALLBACK
            return BackendAttempt(self, state, predicted, decision)
        if hedge:
            return None
        if not self._deferred:
            return self._last_resort(now)
        # In line after all: the one expected to be free soonest.
        predicted, state = min(
            ((router.forecast(s.name, self.request, now), s) for s in self._deferred),
            key=lambda pair: pair[0].total,
        )
        self._deferred.remove(state)
        return BackendAttempt(self, state, predicted, Decision.QUEUED)

    def _last_resort(self, now: float) -> BackendAttempt | None:
        """A backend skipped for its open breaker, before the turn gives up.

        Envoy's panic mode, one at a time: a server that refused connections
        first (a restart brings it back, and a refusal costs a millisecond),
        then the others in policy order; none whose breaker opened on a slow
        failure.
        """
        worth = [s for s in self._open if s.breaker.worth_a_try()]
        if not worth or now >= self.deadline:
            return None
        state = min(worth, key=lambda s: not s.breaker.likely_back())
        self._open.remove(state)
        predicted = self.host.forecast(state.name, self.request, now)
        return BackendAttempt(self, state, predicted, Decision.LAST_RESORT)

    def would_hedge_onto(self, state: BackendState, now: float) -> bool:
        """Whether this turn, waiting to hedge, would take state now."""
        return (
            self._hedge_beat is not None
            and state in self._pending
            and self.host.forecast(state.name, self.request, now).total
            <= self._hedge_beat
        )

    async def _race(self, racing: list[BackendAttempt]) -> BackendAttempt | None:
        """Run attempts until one starts its answer; None when all failed.

        With hedging, a second backend starts when the first has said no
        answer word by its hedge delay; the first to answer wins and the
        other is cancelled.
        """
        settings = self.host.settings
        loop = asyncio.get_running_loop()
        try:
            while racing:
                now = loop.time()
                hedge_at = None
                if settings.hedging and len(racing) == 1 and not racing[0].hedged:
                    primary = racing[0]
                    delay = primary.state.latency.hedge_delay(
                        primary.forecast, settings.predictor
                    )
                    hedge_at = max(
                        now, primary.started + delay, primary.hedge_not_before
                    )
                due = [a.first_deadline for a in racing if a.awaits_first_token()]
                if (
                    hedge_at is None
                    and len(racing) == 1
                    and not racing[0].pulling
                    and (not due or self._nothing_beside())
                ):
                    if await self._pull_alone(racing):
                        return racing[0]
                    continue
                wake = min(
                    [*due, hedge_at] if hedge_at is not None else due, default=None
                )
                pulls = {attempt.pull(): attempt for attempt in racing}
                done, _ = await asyncio.wait(
                    pulls,
                    timeout=None if wake is None else max(0.0, wake - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done and self._overdue(racing):
                    continue
                if not done and hedge_at is not None and loop.time() >= hedge_at:
                    # Worth it only for a backend expected to answer before
                    # this one: as it runs later, that is more of them. Checked
                    # again until one is started; the longest waiting first.
                    primary = racing[0]
                    beat = max(
                        primary.forecast.total,
                        primary.forecast.remaining(primary.elapsed()),
                    )
                    if hedge := self._start_next(beat=beat):
                        primary.hedged = True
                        racing.append(hedge)
                        self._leave_hedge_line()
                    else:
                        if self._hedge_beat is None:
                            self.host.hedge_line.append(self)
                        self._hedge_beat = beat
                        primary.hedge_not_before = (
                            loop.time() + settings.predictor.hedge_min
                        )
                    continue
                for pull in done:
                    attempt = pulls[pull]
                    try:
                        attempt.take(pull)
                    except BackendError as err:
                        racing.remove(attempt)
                        self._failed(attempt, err)
                        # Only overdue ones left: the next goes beside them.
                        if all(a.overdue for a in racing) and (
                            beside := self._start_next()
                        ):
                            racing.append(beside)
                        continue
                    if attempt.answering:
                        for other in [a for a in racing if a is not attempt]:
                            racing.remove(other)
                            await other.close()
                            self._lost(other, attempt)
                        return attempt
            return None
        finally:
            self._leave_hedge_line()

    def _nothing_beside(self) -> bool:
        """Whether no backend is left to start beside an overdue attempt."""
        return not (self._pending or self._deferred or self._open)

    async def _pull_alone(self, racing: list[BackendAttempt]) -> bool:
        """Take the one attempt's next event: nothing to race it against.

        No task of its own, then: this one awaits it. A first token still
        due has a loop timer that counts the miss (nothing is started
        beside). Returns whether the answer started; an attempt that failed
        leaves racing.
        """
        alone = racing[0]
        timer = (
            asyncio.get_running_loop().call_at(
                alone.first_deadline, self._count_miss, alone
            )
            if alone.awaits_first_token()
            else None
        )
        try:
            await alone.pull_here()
        except BackendError as err:
            racing.remove(alone)
            self._failed(alone, err)
            return False
        finally:
            if timer is not None:
                timer.cancel()
        return alone.answering

    def _overdue(self, racing: list[BackendAttempt]) -> bool:
        """Count the attempts whose first token is overdue; start the next beside.

        They are not cut: the next backend may fail too, and a late answer
        beats none. The breaker hears of the miss at once.
        """
        now = asyncio.get_running_loop().time()
        late = [a for a in racing if a.awaits_first_token() and a.first_deadline <= now]
        for attempt in late:
            self._count_miss(attempt)
        if late and (beside := self._start_next()):
            racing.append(beside)
        return bool(late)

    def _count_miss(self, attempt: BackendAttempt) -> None:
        """Its first token is overdue: the breaker hears of it at once."""
        if attempt.awaits_first_token():
            attempt.overdue = True
            if (error := attempt.missed()).kind not in NOT_FAILURES:
                self.host.missed_deadline(attempt.state, error)

    def _leave_hedge_line(self) -> None:
        if self._hedge_beat is not None:
            self._hedge_beat = None
            self.host.hedge_line.remove(self)

    async def _complete(self, winner: BackendAttempt) -> list[RouterEvent] | None:
        """The winner's whole answer, for an unspoken turn; None if it broke off.

        Then the next backend is asked.
        """
        answer = winner.take_held()
        try:
            async for event in winner.rest():
                answer.append(event)
        except BackendError as err:
            self._failed(winner, err)
            return None
        return answer

    def _serve(self, winner: BackendAttempt) -> None:
        """The winner answered in full: learn from it, note it."""
        self.host.record_success(winner.state, winner)
        self._served = winner.outcome()
        self._note(winner.state, self._served)
        self.served_by = winner.state.name

    def _failed(self, attempt: BackendAttempt, err: BackendError) -> None:
        state = attempt.state
        if err.kind not in NOT_FAILURES:
            # An overdue attempt's breaker has heard of it already.
            self.host.record_failure(state, err, breaker=not attempt.overdue)
        if attempt.first_word is None and err.kind is ErrorKind.TIMED_OUT:
            state.latency.observe_silence(
                attempt.elapsed(), attempt.forecast, asyncio.get_running_loop().time()
            )
        outcome = attempt.outcome(err)
        if err.kind is ErrorKind.UNREACHABLE and state.power.wake_on_demand():
            outcome = replace(outcome, waking=True)
        self._note(state, outcome)
        _LOGGER.debug("Backend %s failed: %s", state.name, err)

    def _lost(self, loser: BackendAttempt, winner: BackendAttempt) -> None:
        """An attempt another answered before: no failure, unless it was overdue."""
        state = loser.state
        state.latency.observe_silence(
            loser.elapsed(), loser.forecast, asyncio.get_running_loop().time()
        )
        if not loser.overdue:
            error: BackendError = Overtaken(f"{winner.state.name} answered first")
        elif (error := loser.missed()).kind not in NOT_FAILURES:
            self.host.record_failure(state, error, breaker=False)
        self._note(state, loser.outcome(error))
