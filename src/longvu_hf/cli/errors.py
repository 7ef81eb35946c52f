"""The command's errors and exit statuses."""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """Bad input: the message is one line that says what is wrong and how to fix it (exit status 2)."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message`, for one-line reports of errors raised by other libraries."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:limit]}" if text else type(error).__name__
