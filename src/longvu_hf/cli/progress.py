"""Progress bars on stderr (decoding, the two towers, generation) and the streamer that prints the answer: the
command's views of the library's progress callback (`longvu_hf.session`) and of transformers' streamer."""

from __future__ import annotations

import sys

from ..session import SIGLIP


def _bar(quiet: bool, **kwargs):
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal (stderr), never in logs or pipes.
    return tqdm(disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True, **kwargs)


class ProgressBars:
    """A `progress(stage, count, total)` callback for `VideoSession.open` that draws one tqdm bar per stage
    (decoding, DINOv2 over every sampled frame, SigLIP over the kept ones); `close()` ends them.

    Example:

    ```python
    >>> with ProgressBars(quiet=False) as bars:
    ...     session = VideoSession.open(model, processor, "clip.mp4", progress=bars)
    ```
    """

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bars: dict[str, object] = {}

    def __call__(self, stage: str, count: int, total: int | None) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = _bar(self.quiet, total=None if stage == SIGLIP else total, desc=stage,
                                          unit="frame")
        if bar.total is not None and bar.n + count > bar.total:
            bar.total = bar.n + count  # kept frames re-encoded after the selection cap
        bar.update(count)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_streamer(tokenizer, max_new_tokens: int, quiet: bool, echo: bool = True):
    """A `TextStreamer` that prints the answer as it comes (to stdout) and keeps it; when stdout is not a terminal
    (the answer goes to a file or a pipe), a bar on stderr counts the generated tokens."""
    from transformers import TextStreamer

    show_bar = not quiet and not sys.stdout.isatty()

    class AnswerStreamer(TextStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.pieces: list[str] = []
            self.bar = _bar(not show_bar, total=max_new_tokens, desc="generating", unit="token")

        def put(self, value):
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.bar.update(int(value.numel()))
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            self.pieces.append(text)
            if echo:
                print(text, flush=True, end="" if not stream_end else None)
            if stream_end:
                self.bar.close()

        @property
        def answer(self) -> str:
            return "".join(self.pieces).strip()

    return AnswerStreamer()
