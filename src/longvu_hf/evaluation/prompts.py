"""The official LongVU evaluation prompts (`eval/eval_*.py`), one builder per benchmark.

Each returns the text that follows the video in the user turn; the chat template puts the video placeholder first,
as the official scripts put `<image>\\n` before the question.
"""

from __future__ import annotations

from collections.abc import Sequence

VIDEOMME_INSTRUCTION = "Respond with only the letter (A, B, C, or D) of the correct option."
MLVU_INSTRUCTION = "Respond with only the letter (A, B, C or D) of the correct option."
EGOSCHEMA_INSTRUCTION = "Respond with only the letter (A, B, C, D or E) of the correct option."
MVBENCH_INSTRUCTION = "Answer with the option's letter from the given choices directly and only give the best option."
SUBTITLES_HEADER = "This video's subtitles are listed below:"


def option_letters(num_options: int) -> str:
    """"ABCD..." for `num_options` options."""
    if not 1 <= num_options <= 26:
        raise ValueError(f"A multiple-choice question needs 1 to 26 options, got {num_options}")
    return "".join(chr(ord("A") + i) for i in range(num_options))


def _lettered_options(options: Sequence[str]) -> str:
    return "".join(f"({letter}) {option}\n" for letter, option in zip(option_letters(len(options)), options))


def videomme_prompt(question: str, options: Sequence[str], subtitles: str | None = None) -> str:
    """Video-MME: its options already carry their letters ("A. ..."), and subtitles (if any) come first."""
    text = f"Question: {question}\nOptions:\n" + "".join(f"{option}\n" for option in options)
    text += VIDEOMME_INSTRUCTION + "\n"
    return subtitles_block(subtitles) + text


def subtitles_block(subtitles: str | None) -> str:
    """The official VideoMME subtitle preamble, or "" when there are none."""
    if not subtitles:
        return ""
    return f"{SUBTITLES_HEADER}\n{subtitles}\n"


def mvbench_prompt(question: str, options: Sequence[str]) -> str:
    return f"Question: {question}\nOptions:\n{_lettered_options(options)}{MVBENCH_INSTRUCTION}"


def mlvu_prompt(question: str, options: Sequence[str]) -> str:
    return f"Question: {question}\nOptions:\n{_lettered_options(options)}{MLVU_INSTRUCTION}"


def egoschema_prompt(question: str, options: Sequence[str]) -> str:
    return f"Question: {question}\nOptions:\n{_lettered_options(options)}{EGOSCHEMA_INSTRUCTION}"


__all__ = [
    "egoschema_prompt",
    "mlvu_prompt",
    "mvbench_prompt",
    "option_letters",
    "subtitles_block",
    "videomme_prompt",
]
