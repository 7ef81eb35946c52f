"""Chat prompts about one video, shared by every front end (the library's `VideoSession`, hence the CLI, the web page
and the benchmark predictor; the vLLM engine; the lmms-eval model): the messages with the video in the first user
turn, and their tokenization with one BOS rule.

Example:

```python
>>> from longvu_hf.chat import video_chat_messages, tokenize_chat
>>> messages = video_chat_messages([("What happens?", "A dog runs.")], "Then what?")
>>> ids = tokenize_chat(processor, messages)  # input_ids / attention_mask, one video placeholder
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def video_chat_messages(
    turns: Sequence[tuple[str, str]], question: str, system: str | None = None
) -> list[dict]:
    """Chat messages for the earlier (question, answer) `turns` and the new `question`, with the video placeholder
    in the first user turn; `system` replaces the template's default system prompt."""
    messages = [] if system is None else [{"role": "system", "content": [{"type": "text", "text": system}]}]
    for index, (asked, answered) in enumerate([*turns, (question, None)]):
        content = [{"type": "text", "text": asked}]
        if index == 0:
            content.insert(0, {"type": "video"})
        messages.append({"role": "user", "content": content})
        if answered is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
    return messages


def tokenize_chat(template_owner: Any, messages: list[dict], tokenizer: Any = None, **tokenizer_kwargs: Any):
    """Tokenize chat messages whose video is not decoded (one placeholder per video), as the processor's
    `apply_chat_template` does: no second BOS when the rendered template already starts with one.

    `template_owner` renders the template (a processor or a tokenizer); `tokenizer` defaults to its `tokenizer`
    (or itself). Without `tokenizer_kwargs`, returns `input_ids`/`attention_mask` as tensors."""
    tokenizer = tokenizer or getattr(template_owner, "tokenizer", template_owner)
    text = template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(tokenizer(text, add_special_tokens=_adds_special_tokens(tokenizer, text),
                          **(tokenizer_kwargs or {"return_tensors": "pt"})))


def _adds_special_tokens(tokenizer: Any, text: str) -> bool:
    """The BOS rule: a rendered template that already starts with BOS (Llama-3's) gets no second one."""
    return not (tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token))


def tokenize_chats(template_owner: Any, conversations: Sequence[list[dict]], tokenizer: Any = None):
    """`tokenize_chat` for a batch of chats, left-padded into `input_ids`/`attention_mask` tensors (for a batched
    `generate`); each chat gets the same BOS rule."""
    tokenizer = tokenizer or getattr(template_owner, "tokenizer", template_owner)
    encoded = [tokenize_chat(template_owner, messages, tokenizer, return_tensors=None) for messages in conversations]
    return dict(tokenizer.pad({"input_ids": [item["input_ids"] for item in encoded],
                               "attention_mask": [item["attention_mask"] for item in encoded]},
                              padding_side="left", return_tensors="pt"))


__all__ = ["tokenize_chat", "tokenize_chats", "video_chat_messages"]
