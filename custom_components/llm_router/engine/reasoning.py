"""Streaming separation of inline <think> reasoning from the answer.

Models like DeepSeek-R1 write their reasoning into the answer text between
<think> and </think>. Their chat templates often put the opening tag into
the prompt, so the output starts mid-reasoning and shows only </think>.
Tags may be split across stream chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


@dataclass(frozen=True, slots=True)
class Split:
    """What one chunk of model output held: reasoning and answer text."""

    reasoning: str = ""
    answer: str = ""


_NOTHING = Split()


class _State(Enum):
    START = auto()  # only whitespace so far, or a partial opening tag
    REASONING = auto()  # inside <think>, expected to think
    HELD = auto()  # maybe reasoning, until </think> says so; not emitted yet
    ANSWER = auto()


class ReasoningSplitter:
    """Separate reasoning from answer text, chunk by chunk.

    With expect_reasoning, output that starts without <think> is held back
    until </think> confirms it was reasoning, and output that starts with
    <think> is reasoning. Otherwise text is answer, so nothing is delayed,
    until a <think> appears: what follows is held back until </think>
    confirms it was reasoning. Held text that no </think> confirms was the
    answer after all (a model may write about the tag): flush() returns it
    as such, with its <think>.
    """

    def __init__(self, *, expect_reasoning: bool = False) -> None:
        self._expect_reasoning = expect_reasoning
        self._state = _State.START
        self._buffer = ""
        self._held = ""
        self._held_tag = ""
        """The <think> that started the held text, given back if unconfirmed."""
        self._answer_started = False

    def reasoning_handled_elsewhere(self) -> None:
        """The server sends reasoning in its own field: content is answer."""
        self._expect_reasoning = False

    def passes(self, text: str) -> bool:
        """Whether text is answer as it is, with nothing to split or hold.

        So once the answer has begun: no reasoning was expected, or it has
        ended, and no tag can start in text. Then feed() is not needed.
        """
        return (
            self._state is _State.ANSWER
            and self._answer_started
            and not self._buffer
            and "<" not in text
        )

    def feed(self, text: str) -> Split:
        """Split the next chunk of model output."""
        if (
            self._state is _State.START
            and not self._expect_reasoning
            and not self._buffer
            and "<" not in text
            and text
            and not text.isspace()
        ):
            # The usual start: answer text, no tag in sight.
            self._state = _State.ANSWER
            return Split(answer=self._answer_text(text))
        self._buffer += text
        if self._state is _State.START and not self._leave_start():
            return Split()
        return self._drain(final=False)

    def flush(self) -> Split:
        """End of stream: release everything still buffered or held."""
        if self._state is _State.ANSWER and not self._buffer:
            return _NOTHING
        if self._state is _State.START:
            self._state = _State.ANSWER
        split = self._drain(final=True)
        if self._state is not _State.HELD:
            return split
        # No </think> came: the held text was the answer after all.
        held = self._held_tag + self._held
        self._held = self._held_tag = ""
        self._state = _State.ANSWER
        return Split(split.reasoning, self._answer_text(held) + split.answer)

    def _leave_start(self) -> bool:
        """Decide the initial state once the output's start is known."""
        stripped = self._buffer.lstrip()
        if not stripped or OPEN_TAG.startswith(stripped):
            return False
        if stripped.startswith(OPEN_TAG):
            self._buffer = stripped.removeprefix(OPEN_TAG)
            if self._expect_reasoning:
                self._state = _State.REASONING
            else:
                self._hold(OPEN_TAG)
        elif self._expect_reasoning:
            self._hold("")
        else:
            self._state = _State.ANSWER
        return True

    def _drain(self, *, final: bool) -> Split:
        reasoning: list[str] = []
        answer: list[str] = []
        while True:
            in_reasoning = self._state in (_State.REASONING, _State.HELD)
            # A stray </think> in the answer is dropped, not spoken.
            tags = (CLOSE_TAG,) if in_reasoning else (OPEN_TAG, CLOSE_TAG)
            found = [(i, tag) for tag in tags if (i := self._buffer.find(tag)) >= 0]
            if not found:
                keep = 0 if final else _partial_tag_length(self._buffer, tags)
                body = self._buffer[: len(self._buffer) - keep]
                self._buffer = self._buffer[len(self._buffer) - keep :]
                self._take(body, reasoning, answer)
                return Split("".join(reasoning), "".join(answer))
            index, tag = min(found)
            self._take(self._buffer[:index], reasoning, answer)
            self._buffer = self._buffer[index + len(tag) :]
            if tag == OPEN_TAG:
                self._hold(OPEN_TAG)
                continue
            if self._state is _State.HELD:
                reasoning.append(self._held)
                self._held = self._held_tag = ""
            self._state = _State.ANSWER

    def _hold(self, tag: str) -> None:
        """Hold what follows until </think> shows whether it is reasoning."""
        self._state = _State.HELD
        self._held_tag = tag

    def _take(self, text: str, reasoning: list[str], answer: list[str]) -> None:
        if self._state is _State.REASONING:
            reasoning.append(text)
        elif self._state is _State.HELD:
            self._held += text
        else:
            answer.append(self._answer_text(text))

    def _answer_text(self, text: str) -> str:
        """Answer text, without the whitespace a model puts before it."""
        if not self._answer_started:
            text = text.lstrip()
            self._answer_started = bool(text)
        return text


def _partial_tag_length(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of text that could begin one of tags.

    Every tag starts with "<": only ends from one can (checked per chunk).
    """
    tail = text[-(max(map(len, tags)) - 1) :]
    index = tail.find("<")
    while index >= 0:
        if any(tag.startswith(tail[index:]) for tag in tags):
            return len(tail) - index
        index = tail.find("<", index + 1)
    return 0
