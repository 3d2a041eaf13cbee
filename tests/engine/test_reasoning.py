"""Tests of the streaming reasoning splitter."""

from __future__ import annotations

import pytest

from custom_components.llm_router.engine.reasoning import ReasoningSplitter, Split


def run(chunks: list[str], *, expect_reasoning: bool = False) -> tuple[str, str]:
    """Split as the router does: chunks that pass are the answer as they are."""
    splitter = ReasoningSplitter(expect_reasoning=expect_reasoning)
    parts = [
        Split(answer=chunk) if splitter.passes(chunk) else splitter.feed(chunk)
        for chunk in chunks
    ]
    parts.append(splitter.flush())
    return "".join(p.reasoning for p in parts), "".join(p.answer for p in parts)


def every_split(text: str) -> list[list[str]]:
    """The text cut into two chunks at every position, and char by char."""
    return [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]


@pytest.mark.parametrize(
    "chunks", every_split("<think>Lamp is off.</think>\n\nThe lamp is off.")
)
def test_tags_split_anywhere(chunks: list[str]) -> None:
    assert run(chunks) == ("Lamp is off.", "The lamp is off.")


@pytest.mark.parametrize("chunks", every_split("User asks.</think>\n\nIt is 21 °C."))
def test_missing_opening_tag_when_reasoning_expected(chunks: list[str]) -> None:
    assert run(chunks, expect_reasoning=True) == ("User asks.", "It is 21 °C.")


def test_held_reasoning_is_not_emitted_before_close_tag() -> None:
    splitter = ReasoningSplitter(expect_reasoning=True)
    assert splitter.feed("The user wants") == Split()
    assert splitter.feed(" light.</think>On") == Split("The user wants light.", "On")


def test_no_tags_while_expecting_reasoning_is_the_answer() -> None:
    assert run(["Plain ", "answer."], expect_reasoning=True) == ("", "Plain answer.")


@pytest.mark.parametrize("chunks", every_split("Plain answer, no tags < > here."))
def test_no_tags_passes_through(chunks: list[str]) -> None:
    assert run(chunks) == ("", "Plain answer, no tags < > here.")


def test_plain_text_streams_without_delay() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("Hello") == Split(answer="Hello")
    assert splitter.feed(" world") == Split(answer=" world")


def test_only_answer_text_without_tags_passes() -> None:
    plain = ReasoningSplitter()
    assert not plain.passes(" Hello")  # the answer's leading space goes
    assert plain.feed(" Hello") == Split(answer="Hello")
    assert plain.passes(" world")
    assert not plain.passes(" a <think>")
    thinking = ReasoningSplitter(expect_reasoning=True)
    thinking.feed("The user")
    assert not thinking.passes(" wants light.")
    thinking.feed(" wants light.</think>On")
    assert thinking.passes(" it goes.")
    partial = ReasoningSplitter()
    partial.feed("a <thi")
    assert not partial.passes("s")  # "<thi" is held until it is no tag


def test_partial_tag_at_chunk_end_is_held_then_released() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("a <thi") == Split(answer="a ")
    assert splitter.feed("ng") == Split(answer="<thing")


def test_reasoning_in_own_field_turns_off_holding() -> None:
    splitter = ReasoningSplitter(expect_reasoning=True)
    splitter.reasoning_handled_elsewhere()
    assert splitter.feed("Answer") == Split(answer="Answer")


def test_stray_close_tag_in_answer_is_dropped() -> None:
    assert run(["Okay.</think> Done."]) == ("", "Okay. Done.")


def test_second_think_block_is_reasoning() -> None:
    assert run(["<think>a</think>b<think>c</think>d"]) == ("ac", "bd")


def test_empty_think_block_and_leading_whitespace() -> None:
    assert run(["  <think>\n\n</think>\n\n", "Hi"]) == ("\n\n", "Hi")


def test_whitespace_only_output() -> None:
    assert run(["  ", "\n"]) == ("", "")


def test_unclosed_think_block_is_reasoning_when_thinking() -> None:
    assert run(["<think>still thinking"], expect_reasoning=True) == (
        "still thinking",
        "",
    )


@pytest.mark.parametrize("expect_reasoning", [False, True])
@pytest.mark.parametrize(
    "text",
    [
        "Use the <think> tag to mark reasoning.",
        "Use the <think> and </tag> pair.",
        "It says <think",
    ],
)
def test_think_tag_mentioned_in_the_answer_is_spoken(
    text: str, expect_reasoning: bool
) -> None:
    for chunks in every_split(text):
        assert run(chunks, expect_reasoning=expect_reasoning) == ("", text)


def test_unclosed_think_block_without_thinking_is_the_answer() -> None:
    assert run(["<think> is an HTML-like", " tag."]) == (
        "",
        "<think> is an HTML-like tag.",
    )


def test_think_block_mid_answer_is_held_until_closed() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("Sure. <think>hmm") == Split(answer="Sure. ")
    assert splitter.feed(" ok</think> Done.") == Split("hmm ok", " Done.")


def test_partial_open_tag_at_end_of_stream_is_answer() -> None:
    assert run(["<thi"]) == ("", "<thi")
