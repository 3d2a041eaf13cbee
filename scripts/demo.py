"""The demo's steps once the environment is ready (run by scripts/demo)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
import json
from pathlib import Path
import secrets
import signal
import sys
import textwrap
import time

from tests.e2e.harness import (
    LLM_MODEL,
    Credentials,
    HarnessError,
    HassClient,
    Router,
    Server,
    add_backend,
    ask_action,
    check_no_reports,
    create_router,
    gpu_backend_down,
    integration_states,
    last_attempts,
    onboard,
    pi_backend,
    start_hass,
    start_llm_server,
    state_value,
)
from tests.e2e.voice import (
    VOICE,
    add_wyoming_tts,
    save_wav,
    speak,
    speaking_pipeline,
    start_tts_server,
)

ROUTER_NAME = "LLM Router"
QUESTIONS = (
    "What is a comfortable temperature for a bedroom at night?",
    "How often should I water a snake plant?",
    "Give me one tip to save energy in the kitchen.",
)
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
    with step("Adding Piper through the Wyoming integration"):
        speaker = add_wyoming_tts(hass, tts)
    print(f"    {speaker.entity_id} ({speaker.language}, voice {speaker.voice})")

    with step(f"Creating the router {ROUTER_NAME!r} with the Pi (priority 2)"):
        router = create_router(hass, ROUTER_NAME, pi_backend(llm))
    gpu = gpu_backend_down()
    with step(f"Adding the GPU server (priority 1), down at {gpu.url}"):
        add_backend(hass, router, gpu)

    with step(
        f"Making {ROUTER_NAME!r} the preferred Assist pipeline, speaking with Piper"
    ):
        pipeline = speaking_pipeline(
            hass, ROUTER_NAME, router.agent_id, speaker, preferred=True
        )

    for number, question in enumerate(QUESTIONS, 1):
        with step(f"Asking {router.agent_id} through the pipeline, out loud"):
            ask(hass, router, pipeline, question, work / "answers" / f"{number}.wav")

    action_question = "Name one thing a smart home can automate."
    with step("Asking through the llm_router.ask action, with response data"):
        response = ask_action(hass, router, action_question)
    print(f"    Q: {action_question}")
    print(textwrap.indent(json.dumps(response, indent=2), "    "))

    with step("The router's entities"):
        for item in integration_states(hass):
            unit = item["attributes"].get("unit_of_measurement") or ""
            print(f"    {item['entity_id']}: {_rounded(item['state'])} {unit}".rstrip())

    with step("Checking Home Assistant's log for reports naming llm_router"):
        check_no_reports(hass_server)

    if keep:
        print(
            f"\nHome Assistant: {hass_server.url} (user {user.username!r}, "
            f"password {user.password!r}): Assist (the speech bubble at the top) "
            f"answers with {ROUTER_NAME!r}; its backends are under Settings > "
            f"Devices & services > {ROUTER_NAME}.\n"
            f"Spoken: the pipeline speaks with Piper wherever a question comes "
            f"by voice (a satellite, or the dialog's microphone once the "
            f"pipeline has a speech-to-text engine); the frontend takes typed "
            f"questions to the answer's text only. The demo's answers play "
            f"under Settings > Voice assistants > {ROUTER_NAME} > ⋮ > Debug > "
            f"Play audio.\n"
            f"Logs: {hass_server.log}, {llm.log}, {tts.log}\n"
            f"Stop all three: kill -- -{hass_server.process.pid} "
            f"-{llm.process.pid} -{tts.process.pid}"
        )


def ask(
    hass: HassClient, router: Router, pipeline: str, question: str, wav: Path
) -> None:
    """One spoken turn: the answer, its timing, who served it, its audio."""
    fallbacks_before = state_value(hass, router.fallbacks_id)
    turn = speak(hass, pipeline, question)
    print(f"    Q: {question}")
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
