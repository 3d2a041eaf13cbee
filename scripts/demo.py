"""The demo's steps once the environment is ready (run by scripts/demo)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
import json
from pathlib import Path
import secrets
import signal
import sys
import textwrap
import time

from custom_components.llm_router.updates import UPDATE_INTERVAL
from tests.e2e.conversations import ask_action, last_attempts
from tests.e2e.hass_process import (
    Credentials,
    HassClient,
    check_no_reports,
    integration_states,
    onboard,
    start_hass,
    state_value,
)
from tests.e2e.router_setup import (
    Router,
    add_backend,
    create_router,
    gpu_backend_down,
    pi_backend,
)
from tests.e2e.servers import LLM_MODEL, HarnessError, Server, start_llm_server
from tests.e2e.voice import (
    VOICE,
    SpokenTurn,
    add_wyoming_stt,
    add_wyoming_tts,
    ask_aloud,
    question_wav,
    save_wav,
    speak,
    speaking_pipeline,
    start_stt_server,
    start_tts_server,
)

ROUTER_NAME = "LLM Router"
QUESTIONS = (
    "What is a comfortable temperature for a bedroom at night?",
    "How often should I water a snake plant?",
    "Give me one tip to save energy in the kitchen.",
)
SPOKEN_QUESTION = "In one sentence, what should I cook for dinner tonight?"
KEEP_PORT = 8123


@contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a step; name it in any failure."""
    print(f"==> {title}", flush=True)
    started = time.monotonic()
    try:
        yield
    except HarnessError as err:
        raise HarnessError(f"{title}: {err}") from None
    print(f"    ({time.monotonic() - started:.1f} s)", flush=True)


def run(work: Path, keep: bool, servers: list[Server]) -> None:
    """Start the servers, set up the router, talk to it."""
    with step("Starting the LLM server (the Pi)"):
        llm = start_llm_server(work / "llm-server.log", keep=keep)
        servers.append(llm)
    print(f"    {llm.url} serves {LLM_MODEL}")
    with step("Starting the text-to-speech server (Piper, Wyoming protocol)"):
        tts = start_tts_server(work / "tts-server.log", keep=keep)
        servers.append(tts)
    print(f"    tcp{tts.url.removeprefix('http')} speaks with the Piper voice {VOICE}")
    with step("Starting the speech-to-text server (pocketsphinx, Wyoming protocol)"):
        stt = start_stt_server(work / "stt-server.log", keep=keep)
        servers.append(stt)
    print(f"    tcp{stt.url.removeprefix('http')} hears English")

    user = Credentials(password=secrets.token_urlsafe(12) if keep else "demo-password")
    with step("Starting Home Assistant"):
        hass_server = start_hass(
            work / "config",
            work / "home-assistant.out",
            port=KEEP_PORT if keep else None,
            keep=keep,
        )
        servers.append(hass_server)
        hass = HassClient(hass_server)
        onboard(hass, user)
    print(f"    {hass_server.url}, configuration in {work / 'config'}")
    with step("Adding Piper and pocketsphinx through the Wyoming integration"):
        speaker = add_wyoming_tts(hass, tts)
        listener = add_wyoming_stt(hass, stt)
    print(f"    {speaker.entity_id} ({speaker.language}, voice {speaker.voice})")
    print(f"    {listener.entity_id} ({listener.language})")

    with step(f"Creating the router {ROUTER_NAME!r} with the Pi (priority 2)"):
        router = create_router(hass, ROUTER_NAME, pi_backend(llm))
    gpu = gpu_backend_down()
    with step(f"Adding the GPU server (priority 1), down at {gpu.url}"):
        add_backend(hass, router, gpu)

    with step(
        f"Making {ROUTER_NAME!r} the preferred Assist pipeline, hearing with "
        f"pocketsphinx and speaking with Piper"
    ):
        pipeline = speaking_pipeline(
            hass,
            ROUTER_NAME,
            router.agent_id,
            speaker,
            listener=listener,
            preferred=True,
        )

    ask_questions(hass, router, pipeline, work / "answers")

    action_question = "Name one thing a smart home can automate."
    with step("Asking through the llm_router.ask action, with response data"):
        response = ask_action(hass, router, action_question)
    print(f"    Q: {action_question}")
    print(textwrap.indent(json.dumps(response, indent=2), "    "))

    with step("The router's entities"):
        # A backend's sensors show a turn within a second of the one before.
        time.sleep(UPDATE_INTERVAL)
        for item in integration_states(hass):
            unit = item["attributes"].get("unit_of_measurement") or ""
            print(f"    {item['entity_id']}: {_rounded(item['state'])} {unit}".rstrip())

    with step("Checking Home Assistant's log for reports naming llm_router"):
        check_no_reports(hass_server)

    if keep:
        print(kept(hass_server, user, servers))


def ask_questions(
    hass: HassClient, router: Router, pipeline: str, answers: Path
) -> None:
    """The questions through the pipeline: typed ones, then a spoken one."""
    for number, question in enumerate(QUESTIONS, 1):
        with step(f"Asking {router.agent_id} through the pipeline, out loud"):
            print(f"    Q: {question}")
            ask(
                hass,
                router,
                partial(speak, hass, pipeline, question),
                answers / f"{number}.wav",
            )
    with step("Asking by voice: Piper says the question, pocketsphinx hears it"):
        spoken = question_wav(SPOKEN_QUESTION, answers / "question.wav")
        print(f"    Q: {SPOKEN_QUESTION} (spoken: {spoken})")
        ask(
            hass,
            router,
            partial(ask_aloud, hass, pipeline, spoken),
            answers / f"{len(QUESTIONS) + 1}.wav",
        )


def kept(hass_server: Server, user: Credentials, servers: list[Server]) -> str:
    """How to use what --keep leaves running, and how to stop it."""
    return (
        f"\nHome Assistant: {hass_server.url} (user {user.username!r}, "
        f"password {user.password!r}), in a browser on this machine (the "
        f"microphone needs 127.0.0.1 or HTTPS). Assist (the speech bubble at "
        f"the top) answers with {ROUTER_NAME!r}; its backends are under "
        f"Settings > Devices & services > {ROUTER_NAME}.\n"
        f"Spoken: in the Assist dialog, click the microphone and ask in "
        f"English; pocketsphinx hears the question (a small offline "
        f"recognizer: speak plainly, then pause), the router answers and the "
        f"dialog speaks the answer with Piper. Typed questions get text "
        f"answers. The demo's own answers play under Settings > Voice "
        f"assistants > {ROUTER_NAME} > ⋮ > Debug > Play audio.\n"
        f"Logs: {', '.join(str(server.log) for server in servers)}\n"
        f"Stop them all: kill -- "
        + " ".join(f"-{server.process.pid}" for server in servers)
    )


def ask(
    hass: HassClient, router: Router, run: Callable[[], SpokenTurn], wav: Path
) -> None:
    """One spoken turn: what was heard, the answer, its timing, who served
    it, its audio."""
    fallbacks_before = state_value(hass, router.fallbacks_id)
    turn = run()
    if (heard := turn.first("stt-end")) is not None:
        print(f"    heard {turn.transcript!r} at {_seconds(heard.seconds)}")
    print(textwrap.indent(turn.answer.strip(), "    A: ", lambda _: True))
    if turn.errors or not turn.answer.strip() or not turn.audio:
        raise HarnessError(f"no spoken answer {turn.errors}; see {hass.server.log}")
    audio = save_wav(turn.audio, wav)
    print(
        f"    first word {_seconds(turn.first_word)}, "
        f"first audio {_seconds(turn.first_audio)}, "
        f"answer done {_seconds(turn.agent_done)}; "
        f"{audio.seconds:.1f} s of audio ({audio.rate} Hz): {audio.path}"
    )
    served_by = state_value(hass, router.last_backend_id)
    fallbacks = state_value(hass, router.fallbacks_id)
    if fallbacks is None or fallbacks_before is None:
        fell_back = f"unknown ({router.fallbacks_id} does not exist)"
    else:
        fell_back = "yes" if fallbacks != fallbacks_before else "no"
    served = served_by or f"unknown ({router.last_backend_id} does not exist)"
    print(f"    served by: {served}; fell back: {fell_back}")
    for name, attempt in last_attempts(hass, router).items():
        outcome = attempt["error"] or "answered"
        print(f"      {name}: {outcome} ({attempt['seconds'] * 1000:.0f} ms)")


def _seconds(value: float | None) -> str:
    """Seconds after the question, or "none" for what never came."""
    return "none" if value is None else f"{value:.2f} s"


def _rounded(value: str) -> str:
    """A measurement with a sensible number of digits; other states as they are."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def main() -> int:
    """Run the demo; stop what it started unless --keep succeeded."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    # A TERM (or Ctrl-C) still stops the servers on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    servers: list[Server] = []
    kept = False
    try:
        run(args.workdir, args.keep, servers)
        kept = args.keep
    except HarnessError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if not kept:
            for server in reversed(servers):
                server.stop()
    print(f"==> Done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
