"""Turning a generated answer into an option letter.

Two parsers, one per protocol (see `protocols.py`):

- `extract_answer_letter`: a careful parser for the `strict` protocol. It accepts the forms models actually produce
  ("A", "(A)", "A.", "[A]", "**A**", "a)", "The answer is A", "Answer: (B)", "Option C", "B. The man ...", the exact
  text of an option) and returns `None` when it cannot tell, so an unparsable answer is scored wrong.
- `extract_answer_letter_reference`: the official LongVU scripts' regexes (`eval/eval_*.py`), quirks included: they
  take the first capital letter in range anywhere in the text after deleting "Answer" (so "Based on the video" reads
  as "B"). Where they find no valid letter they answer "C" (or crash); here the parser returns `None` and the
  `reference` protocol applies its "C" fallback (`BenchmarkProtocol.fallback_letter`).
"""

from __future__ import annotations

import re
import string

# Lead-in phrases models put before the letter (lmms-eval strips a similar list before matching).
_LEAD_IN = re.compile(
    r"^\s*(?:(?:so|thus|therefore|hence),?\s+)?"
    r"(?:(?:i think|i believe|in my opinion),?\s+)?"
    r"(?:the\s+)?(?:(?:best|correct|right|final|most likely)\s+)?"
    r"(?:answer|option|choice)(?:\s+(?:is|would be|should be))?\s*(?:[:：\-]\s*)?",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"[*_`#]+")
_TRAILING = r"(?=$|[\s\.\,\:\;\)\]\}!?\"'])"


def _letter_pattern(letters: str, case_insensitive: bool) -> str:
    chars = letters + (letters.lower() if case_insensitive else "")
    return f"[{re.escape(chars)}]"


def _normalize_text(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def extract_answer_letter(text: str | None, letters: str = "ABCD", options: list[str] | None = None) -> str | None:
    """Return the option letter a model's answer names, or `None` when it names none (or several).

    Args:
        text: the decoded generation (special tokens already removed).
        letters: the valid letters, in order, e.g. "ABCD" or "ABCDE".
        options: the option texts (without their letters); an answer that repeats one of them exactly counts.

    Example:

    ```python
    >>> extract_answer_letter("The answer is (b).", "ABCD")
    'B'
    >>> extract_answer_letter("Based on the video", "ABCD") is None
    True
    ```
    """
    if text is None:
        return None
    letters = letters.upper()
    cleaned = _MARKUP.sub("", text).strip()
    if not cleaned:
        return None

    # 1. The whole answer is a letter, optionally bracketed / punctuated: "A", "(b)", "[C]", "D.", "e)".
    any_case = _letter_pattern(letters, case_insensitive=True)
    whole = re.fullmatch(rf"[\(\[\{{]?\s*({any_case})\s*[\)\]\}}]?\s*[\.\:\,\;!]?", cleaned)
    if whole:
        return whole.group(1).upper()

    # 2. A lead-in phrase, then a letter: "The answer is A", "Answer: (b)", "Best option: C.", "Option D".
    after_lead_in = _LEAD_IN.sub("", cleaned, count=1)
    if after_lead_in != cleaned:
        led = re.match(rf"[\(\[\{{]?\s*({any_case})\s*[\)\]\}}]?{_TRAILING}", after_lead_in)
        if led:
            return led.group(1).upper()
        if not after_lead_in.strip():
            return None
        cleaned = after_lead_in

    # 3. The answer starts with a letter and goes on: "A. The man ...", "(B) red", "c) three", "D: ...".
    #    A capital may be followed by a space ("A The man"); a lower-case one must be bracketed or punctuated, so the
    #    article in "a man walks" is not read as option A.
    upper = _letter_pattern(letters, case_insensitive=False)
    lower = f"[{re.escape(letters.lower())}]"
    start = re.match(
        rf"(?:[\(\[\{{]\s*({any_case})\s*[\)\]\}}]|({upper})(?=[\.\:\,\;\)\]]|\s|$)|({lower})(?=[\.\:\)\]]))",
        cleaned,
    )
    if start:
        return next(group for group in start.groups() if group).upper()

    # 4. The answer repeats an option's text.
    if options:
        normalized = _normalize_text(cleaned)
        matches = [letter for letter, option in zip(letters, options) if _normalize_text(str(option)) == normalized]
        if len(matches) == 1:
            return matches[0]

    # 5. Exactly one distinct capital letter in range stands alone somewhere: "I would say B here".
    standalone = set(re.findall(rf"(?<![A-Za-z0-9'])\(?({upper})\)?(?![A-Za-z0-9'])", cleaned))
    if len(standalone) == 1:
        return standalone.pop()
    return None


# The official scripts' regexes, per benchmark (`eval/eval_*.py`). `{first}`/`{last}` are the first and last valid
# letter; `group` says whether the letter is a capture group (VideoMME, MLVU) or the whole match is stripped of spaces
# and brackets (EgoSchema, MVBench).
_REFERENCE_PATTERNS = {
    "videomme": (r"[\(\ \[]*([{first}-{last}])[\)\.\ \]]*", True),
    "mlvu": (r"[\(\ \[]*([{first}-{last}])[\)\.\ \]]*", True),
    "egoschema": (r"[\(\ ]*[{first}-{last}][\)\ ]*", False),
    "mvbench": (r"[\(,\ ]*[{first}-{last}][\),\ ]*", False),
}


def extract_answer_letter_reference(text: str | None, letters: str, benchmark: str) -> str | None:
    """Parse an answer exactly as the official LongVU evaluation script of `benchmark` does.

    Returns `None` where the official script finds no valid letter (it then answers "C", or crashes when nothing
    matches at all).

    Example:

    ```python
    >>> extract_answer_letter_reference("Based on the video", "ABCD", "videomme")  # the official quirk
    'B'
    >>> extract_answer_letter_reference("the answer", "ABCD", "mlvu") is None
    True
    ```
    """
    if benchmark not in _REFERENCE_PATTERNS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; expected one of {sorted(_REFERENCE_PATTERNS)}")
    pattern, has_group = _REFERENCE_PATTERNS[benchmark]
    pattern = pattern.format(first=letters[0], last=letters[-1])
    prediction = (text or "").strip().replace("Answer", "")
    found = re.findall(pattern, prediction)
    if not found:
        return None
    candidate = found[0] if has_group else found[0].strip().strip("()")
    return candidate if candidate in letters else None


def parse_answer(text: str | None, letters: str, benchmark: str, options: list[str] | None = None) -> dict:
    """Both parses of one answer: `{"reference": ..., "robust": ...}` (a letter or None each)."""
    return {
        "reference": extract_answer_letter_reference(text, letters, benchmark),
        "robust": extract_answer_letter(text, letters, options),
    }


__all__ = ["extract_answer_letter", "extract_answer_letter_reference", "parse_answer"]
