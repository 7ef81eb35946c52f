"""Chat prompts about one video, shared by every front end (CLI, web page, vLLM engine): the messages with the video
in the first user turn, and their tokenization with one BOS rule.

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
    add_special = not (tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token))
    return dict(tokenizer(text, add_special_tokens=add_special, **(tokenizer_kwargs or {"return_tensors": "pt"})))


__all__ = ["tokenize_chat", "video_chat_messages"]
