"""Chaos: engine turns against the loopback fakes under random faults.

Every turn gives each backend a fault drawn from a seeded random generator
(refuse, black hole, stall, 5xx, 404 model, 400 tools, malformed chunk,
drop mid-stream, slow dribble, healthy); turns run in waves, some of them
concurrent (a server that refuses is stopped for its wave). Per turn: it
ends within a bound computed from the deadlines, gives an answer or
exactly one failure, speaks no reasoning and raises nothing else; per
wave, no task or slot is left behind; at the end the router's counters
equal what the fakes saw, and at least 95 % of the turns in which some
server would have answered got an answer (whole, or partial with its note).

    LLM_ROUTER_CHAOS_SEED=7 scripts/in-env .venv/bin/python -m pytest \
        tests/engine/test_chaos.py

LLM_ROUTER_CHAOS_TURNS changes the number of turns (default 1000). Every
failure message names the seed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
import math
import os
import random
import re
from typing import Any

import aiohttp
import pytest

from custom_components.llm_router.engine.backend import Backend
from custom_components.llm_router.engine.errors import ErrorKind
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
    TextDelta,
    ToolSpec,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.openai import OpenAIBackend
from custom_components.llm_router.engine.outcomes import (
    AllBackendsFailed,
    Attempt,
    Decision,
    Interrupted,
    RouterEvent,
)
from custom_components.llm_router.engine.router import Router
from custom_components.llm_router.engine.settings import RouterSettings
from custom_components.llm_router.engine.turn import Turn
from tests.fakes.base import FakeServer, Reply
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

SEED = int(os.environ.get("LLM_ROUTER_CHAOS_SEED", "20261129"))
TURNS = int(os.environ.get("LLM_ROUTER_CHAOS_TURNS", "1000"))

CONNECT = 0.2
FIRST_TOKEN = 0.1
STALL = 0.1
TURN_TIMEOUT = 1.5
SLACK = 1.0
"""Added to every bound: an event loop shared with the fakes, on busy cores."""

SECRET = "SECRET"
"""In every piece of reasoning, and in no answer."""
WORDS = ("the", "door", "is", "locked", "and", "lights", "are", "off", "now")
LOCK_TOOL = ToolSpec("HassLock", "Lock a door", {"type": "object"})
TURN_NUMBER = re.compile(r"^Turn (\d+):")


class Fault(StrEnum):
    """What a backend does to one turn."""

    REFUSE = "refuse"
    BLACK_HOLE = "black hole"
    STALL = "stall"
    SERVER_ERROR = "5xx"
    MODEL_MISSING = "404 model"
    TOOLS_REFUSED = "400 tools"
    MALFORMED = "malformed chunk"
    DROP = "drop mid-stream"
    DRIBBLE = "slow dribble"
    HEALTHY = "healthy"


WEIGHTS = {fault: 4 if fault is Fault.HEALTHY else 1 for fault in Fault}
"""How often each fault is drawn (refusals: per wave, as often)."""
WHOLE = {Fault.HEALTHY, Fault.DRIBBLE, Fault.TOOLS_REFUSED}
"""Faults whose answer arrives whole (400 tools: once asked without tools)."""
ANSWERED_SHARE = 0.95
"""Of the turns in which some server would have answered, those answered."""


@dataclass
class Plan:
    """One backend's fault for one turn, and the reply that carries it."""

    fault: Fault
    reply: Reply

    def cost(self) -> float:
        """The longest this fault may hold a turn, from the deadlines."""
        match self.fault:
            case Fault.BLACK_HOLE:
                # The last backend a turn has left waits for the turn's deadline.
                return TURN_TIMEOUT
            case Fault.STALL:
                return CONNECT + STALL
            case Fault.DRIBBLE:
                assert self.reply.tokens_per_second
                pieces = len(self.reply.text.split()) + len(self.reply.thinking.split())
                # Thinking tags and the final chunk are pieces too.
                return CONNECT + (pieces + 4) / self.reply.tokens_per_second
            case _:
                return CONNECT


@dataclass
class Target:
    """A backend under test and the fake behind it."""

    backend: Backend
    fake: FakeServer
    inline_think: tuple[bool | str, ...]
    """How this server may write reasoning into the text."""
    chat_path: str

    @property
    def name(self) -> str:
        return self.backend.name


class Handed(StrEnum):
    """What a fake answered one chat request with."""

    WHOLE = "a whole answer"
    TOOLS_REFUSED = "a refusal of tools"
    FAULT = "its fault"


@dataclass
class Tally:
    """What one fake saw of the turns: its answers per turn, in order."""

    handed: defaultdict[int, list[Handed]] = field(
        default_factory=lambda: defaultdict(list)
    )


@dataclass
class Outcome:
    """How one turn ended."""

    number: int
    turn: Turn
    events: list[RouterEvent]
    failure: AllBackendsFailed | None
    seconds: float


def draw_plan(rng: random.Random, target: Target, number: int, *, down: bool) -> Plan:
    others = {
        fault: weight for fault, weight in WEIGHTS.items() if fault is not Fault.REFUSE
    }
    fault = (
        Fault.REFUSE if down else rng.choices(list(others), list(others.values()))[0]
    )
    text = f"Answer {number}: " + " ".join(rng.choices(WORDS, k=rng.randint(1, 5)))
    thinking = f"{SECRET} plan {number}" if rng.random() < 0.5 else ""
    reply = Reply(
        text=text, thinking=thinking, inline_think=rng.choice(target.inline_think)
    )
    match fault:
        case Fault.BLACK_HOLE:
            reply = Reply(text=text, stall_before_first=math.inf)
        case Fault.STALL:
            reply = Reply(
                text=text, thinking=thinking, stall_after_chunks=rng.randint(1, 3)
            )
        case Fault.SERVER_ERROR:
            reply = Reply(status=rng.choice([500, 502, 503]), error="overloaded")
        case Fault.MODEL_MISSING:
            reply = Reply(status=404, error="model 'qwen3' not found")
        case Fault.MALFORMED:
            reply = Reply(
                text=text, thinking=thinking, malformed_after_chunks=rng.randint(0, 3)
            )
        case Fault.DROP:
            reply = Reply(
                text=text, thinking=thinking, drop_after_chunks=rng.randint(0, 3)
            )
        case Fault.DRIBBLE:
            reply = Reply(
                text=text, thinking=thinking, tokens_per_second=rng.choice([100, 200])
            )
    return Plan(fault, reply)


def chooser(target: Target, plans: dict[int, dict[str, Plan]], tally: Tally) -> Any:
    """Pick each chat request's reply by the turn its message names."""

    def choose(body: Any) -> Reply:
        named = TURN_NUMBER.match(body["messages"][-1]["content"])
        assert named is not None
        number = int(named[1])
        plan = plans[number][target.name]
        handed = tally.handed[number]
        if plan.fault is Fault.TOOLS_REFUSED and body.get("tools"):
            handed.append(Handed.TOOLS_REFUSED)
            return Reply(status=400, error="qwen3 does not support tools")
        handed.append(Handed.WHOLE if plan.fault in WHOLE else Handed.FAULT)
        return plan.reply

    return choose


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def config(
    name: str, kind: BackendKind, url: str, model: str, **extra: Any
) -> BackendConfig:
    return BackendConfig(
        name=name,
        kind=kind,
        url=url,
        model=model,
        connect_timeout=CONNECT,
        first_token_timeout=FIRST_TOKEN,
        stall_timeout=STALL,
        **extra,
    )


async def run_turn(router: Router, number: int) -> Outcome:
    loop = asyncio.get_running_loop()
    request = ChatRequest(
        messages=(ChatMessage("user", f"Turn {number}: is the door locked?"),),
        tools=(LOCK_TOOL,),
    )
    started = loop.time()
    turn = router.route(request)
    events: list[RouterEvent] = []
    failure = None
    try:
        async for event in turn:
            events.append(event)
    except AllBackendsFailed as err:
        failure = err
    except Exception as err:
        pytest.fail(f"seed {SEED}, turn {number}: {err!r} escaped")
    return Outcome(number, turn, events, failure, loop.time() - started)


def check_turn(
    outcome: Outcome, plans: dict[str, Plan], bound: float, order: list[str]
) -> None:
    where = f"seed {SEED}, turn {outcome.number}"
    faults = {name: str(plan.fault) for name, plan in plans.items()}
    where += f", faults {faults}, attempts {outcome.turn.attempts}"
    assert outcome.seconds <= bound, (
        f"{where}: took {outcome.seconds:.2f} s > {bound:.2f}"
    )
    answer = "".join(e.text for e in outcome.events if isinstance(e, TextDelta))
    interruptions = [e for e in outcome.events if isinstance(e, Interrupted)]
    assert SECRET not in answer, f"{where}: reasoning spoken: {answer!r}"
    attempts = outcome.turn.attempts
    # A backend passed over as busy is asked again last, in line; one
    # skipped for its open breaker may be tried at the very end.
    later = {
        Decision.QUEUED: ErrorKind.BUSY,
        Decision.LAST_RESORT: ErrorKind.CIRCUIT_OPEN,
    }
    # Noted as they end: one overdue ends after the next one started.
    first_pass = sorted(
        (a.backend for a in attempts if a.decision not in later), key=order.index
    )
    assert first_pass == order[: len(first_pass)], where
    for attempt in attempts:
        if attempt.decision in later:
            passed_over = [
                a.backend for a in attempts if a.error_kind is later[attempt.decision]
            ]
            assert attempt.backend in passed_over, where
    assert all(not a.ok for a in attempts[:-1]), where
    if outcome.failure is not None:
        assert not answer, f"{where}: spoke, then failed"
        assert not interruptions, f"{where}: interrupted, then failed"
        assert outcome.turn.served_by is None, where
        assert first_pass == order, where
        return
    served = outcome.turn.served_by
    assert served is not None, where
    expected = plans[served].reply.text
    if interruptions:
        assert interruptions == [outcome.events[-1]], f"{where}: {outcome.events}"
        assert interruptions[0].backend == served, where
        assert expected.startswith(answer), f"{where}: {answer!r}"
    else:
        assert attempts[-1].ok, where
        assert answer == expected, f"{where}: {answer!r} != {expected!r}"


def check_attempt(attempt: Attempt, handed: list[Handed], where: str) -> None:
    """An attempt's outcome matches what the fake answered it with."""
    where += f": {attempt}, the fake answered {handed}"
    if attempt.ok:
        assert handed in (
            [Handed.WHOLE],
            [Handed.TOOLS_REFUSED, Handed.WHOLE],  # retried without tools
        ), where
    elif attempt.error in ("connection refused", "connect timed out"):
        assert not handed, where
    elif attempt.error_kind in (
        ErrorKind.TIMED_OUT,
        ErrorKind.OUT_OF_TIME,
        ErrorKind.BUSY,  # overdue in line: the next backend answered first
        ErrorKind.CANCELLED,  # started beside an overdue one, which answered
    ):
        # On a busy event loop any request may miss a deadline this short.
        assert len(handed) <= 2, where
    else:
        assert handed == [Handed.FAULT], where


async def stray_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of neither this test, a background probe, nor the fakes' server.

    First the loop settles: httpx leaves the generators of a stream that
    ended before EOF to the garbage collector, whose finalizer closes them
    in a task of their own.
    """
    strays: list[asyncio.Task[Any]] = []
    for _ in range(100):
        strays = [
            task
            for task in asyncio.all_tasks()
            if task is not asyncio.current_task()
            and not task.get_name().startswith("llm_router probe")
            and not _serves_the_fakes(task)
        ]
        if not strays:
            break
        await asyncio.sleep(0)
    return strays


def _serves_the_fakes(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return _accepting(task) or (
        code is not None and "/aiohttp/web_" in code.co_filename
    )


def make_targets(
    session: aiohttp.ClientSession, gpu: FakeOpenAI, box: FakeOpenAI, pi: FakeOllama
) -> list[Target]:
    """A GPU box (vLLM-like), a llama.cpp box that thinks, and the Pi."""
    openai, ollama = BackendKind.OPENAI, BackendKind.OLLAMA
    return [
        Target(
            OpenAIBackend(
                config(
                    "GPU", openai, gpu.url, "fake-model", priority=1, max_parallel=8
                ),
                session,
            ),
            gpu,
            (False, True),
            "/v1/chat/completions",
        ),
        Target(
            OpenAIBackend(
                config(
                    "Box",
                    openai,
                    box.url,
                    "any",
                    priority=2,
                    max_parallel=4,
                    think=True,
                ),
                session,
            ),
            box,
            (False, True, "open"),
            "/v1/chat/completions",
        ),
        Target(
            OllamaBackend(
                config(
                    "Pi",
                    ollama,
                    pi.url,
                    "qwen3",
                    priority=3,
                    max_parallel=2,
                    think=True,
                ),
                session,
            ),
            pi,
            (False,),
            "/api/chat",
        ),
    ]


async def run_wave(
    router: Router,
    targets: list[Target],
    plans: dict[int, dict[str, Plan]],
    wave: list[int],
) -> list[Outcome]:
    """Run a wave's turns at once, the servers that refuse stopped meanwhile."""
    refused = [
        target
        for target in targets
        if any(plans[n][target.name].fault is Fault.REFUSE for n in wave)
    ]
    ports = {target.name: target.fake.port for target in refused}
    for target in refused:
        await stop_server(target.fake)
    # A turn may wait for the others of its wave: its bound is theirs too.
    bound = SLACK + min(
        TURN_TIMEOUT, sum(plan.cost() for n in wave for plan in plans[n].values())
    )
    try:
        async with asyncio.timeout(bound + SLACK):
            done = await asyncio.gather(*(run_turn(router, n) for n in wave))
    except TimeoutError:
        pytest.fail(f"seed {SEED}, turns {wave}: still running after {bound:.2f} s")
    for target in refused:
        await target.fake.start(ports[target.name])
    order = [target.name for target in targets]
    for outcome in done:
        check_turn(outcome, plans[outcome.number], bound, order)
    where = f"seed {SEED}, turns {wave}"
    for state in router.states.values():
        assert state.slots._value == state.config.max_parallel, where
        assert state.waiting == 0, where
    assert not await stray_tasks(), f"{where}: {await stray_tasks()}"
    return done


async def stop_server(fake: FakeServer) -> None:
    """Stop a fake's server once no connection is half accepted.

    asyncio fails a connection it accepted just before its server closed.
    """
    while any(_accepting(task) for task in asyncio.all_tasks()):
        await asyncio.sleep(0)
    await fake.stop()


def _accepting(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_name == "_accept_connection2"


def check_counters(
    router: Router,
    target: Target,
    tally: Tally,
    plans: dict[int, dict[str, Plan]],
    outcomes: list[Outcome],
) -> None:
    """The router's counters for a backend equal what its fake saw."""
    state = router.states[target.name]
    where = f"seed {SEED}, {target.name}"
    attempts = [
        (outcome.number, attempt)
        for outcome in outcomes
        for attempt in outcome.turn.attempts
        if attempt.backend == target.name
        # Not requests of the backend: skipped, or in line for a slot.
        and attempt.error_kind not in (ErrorKind.CIRCUIT_OPEN, ErrorKind.BUSY)
    ]
    for number, attempt in attempts:
        fault = plans[number][target.name].fault
        check_attempt(
            attempt, tally.handed[number], f"{where}, turn {number} ({fault})"
        )
    answered = {number for number, handed in tally.handed.items() if handed}
    assert answered <= {number for number, _ in attempts}, where
    seen = [r for r in target.fake.requests if r["path"] == target.chat_path]
    assert len(seen) == sum(map(len, tally.handed.values())), where
    # Cut off by the turn's deadline, or beaten by another: not the backend's.
    counted = [
        a
        for _, a in attempts
        if a.error_kind not in (ErrorKind.OUT_OF_TIME, ErrorKind.CANCELLED)
    ]
    assert state.requests == len(counted), where
    assert state.failures == sum(not attempt.ok for attempt in counted), where


async def test_chaos(session: aiohttp.ClientSession) -> None:
    rng = random.Random(SEED)
    async with (
        FakeOpenAI() as gpu,
        FakeOpenAI(llama_cpp=True) as box,
        FakeOllama() as pi,
    ):
        targets = make_targets(session, gpu, box, pi)
        turns, plans = draw_turns(rng, targets)
        tallies = {target.name: Tally() for target in targets}
        for target in targets:
            target.fake.choose_reply = chooser(target, plans, tallies[target.name])
        router = Router(
            [target.backend for target in targets],
            settings=RouterSettings(
                turn_timeout=TURN_TIMEOUT, cooldown=0.02, probe_timeout=0.5
            ),
        )
        outcomes: list[Outcome] = []
        try:
            for wave in turns:
                outcomes += await run_wave(router, targets, plans, wave)
        finally:
            await router.close()
        for target in targets:
            check_counters(router, target, tallies[target.name], plans, outcomes)
        answerable = [
            outcome
            for outcome in outcomes
            if any(plan.fault in WHOLE for plan in plans[outcome.number].values())
        ]
        answered = [outcome for outcome in answerable if outcome.failure is None]
        assert len(answered) >= ANSWERED_SHARE * len(answerable), (
            f"seed {SEED}: {len(answered)} of {len(answerable)} turns with a "
            "healthy server answered"
        )
        assert not router._cooldowns, f"seed {SEED}"
        assert not router._probes, f"seed {SEED}"
    assert not await stray_tasks(), f"seed {SEED}: {await stray_tasks()}"


def draw_turns(
    rng: random.Random, targets: list[Target]
) -> tuple[list[list[int]], dict[int, dict[str, Plan]]]:
    """Waves of turns run at once, and each turn's fault per backend.

    A server that refuses is stopped for its wave, so it refuses every turn
    of that wave.
    """
    refuse_share = WEIGHTS[Fault.REFUSE] / sum(WEIGHTS.values())
    waves: list[list[int]] = []
    plans: dict[int, dict[str, Plan]] = {}
    while len(plans) < TURNS:
        wave = list(range(len(plans), min(TURNS, len(plans) + rng.randint(1, 12))))
        down = {target.name for target in targets if rng.random() < refuse_share}
        for number in wave:
            plans[number] = {
                target.name: draw_plan(rng, target, number, down=target.name in down)
                for target in targets
            }
        waves.append(wave)
    return waves, plans
