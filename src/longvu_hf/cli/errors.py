"""The command's errors and exit statuses, and how the library's one-line errors become the command's."""

from __future__ import annotations

from ..loading import ModelLoadError, first_line
from ..media_inputs import InputRefused
from ..session import BudgetError, VideoReadError

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """Bad input: the message is one line that says what is wrong and how to fix it (exit status 2)."""


# The library's errors about the user's input: each is one line naming the input (exit status 2, no traceback).
BAD_INPUT_ERRORS = (CLIError, ModelLoadError, BudgetError, VideoReadError, InputRefused, FileNotFoundError)


def option_name(setting: str) -> str:
    """The command-line option of a `CompressionSettings` field: `max_context_length` -> `--max-context-length`."""
    return "--" + setting.replace("_", "-")


def bad_input_message(error: BaseException) -> str:
    """The one line printed for a `BAD_INPUT_ERRORS` error, with the command's option names."""
    if isinstance(error, BudgetError):
        return error.describe(option_name)
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


__all__ = ["BAD_INPUT_ERRORS", "CLIError", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "bad_input_message",
           "first_line", "option_name"]
