"""Progress bars on stderr (decoding, the two towers, generation) and the streamer that prints the answer."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


def _bar(quiet: bool, **kwargs):
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal (stderr), never in logs or pipes.
    return tqdm(disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True, **kwargs)


def count_sampled_frames(
    video_processor, video, fps: float | None, max_frames: int | None, num_frames: int | None = None
) -> int | None:
    """How many frames the processor will sample from `video` (a `MediaSource` or a local path), for the decoding
    bar; None if it cannot tell cheaply."""
    try:
        from ..processing.video_decoding import open_frame_source

        source = open_frame_source(video, getattr(video_processor, "video_backend", None))
        return len(
            video_processor.sample_frames(source.metadata, fps=fps, max_frames=max_frames, num_frames=num_frames)
        )
    except Exception:  # the processor itself reports unreadable videos, with its own message
        return None


@contextlib.contextmanager
def decoding_progress(video_processor, total: int | None, quiet: bool) -> Iterator[None]:
    """A bar over the frames the video processor decodes and resizes (its `frame_progress` hook)."""
    if quiet or not hasattr(video_processor, "frame_progress"):
        yield
        return
    bar = _bar(quiet, total=total, desc="decoding", unit="frame")
    try:
        with video_processor.frame_progress(bar.update):
            yield
    finally:
        bar.close()


@contextlib.contextmanager
def encoding_progress(model, num_frames: int, quiet: bool) -> Iterator[None]:
    """Bars over the frames that go through DINOv2 (all sampled frames) and SigLIP (the kept ones), chunk by chunk,
    driven by forward pre-hooks on the two towers."""
    if quiet:
        yield
        return
    base = model.model
    dino_bar = _bar(quiet, total=num_frames, desc="DINOv2 (all frames)", unit="frame")
    siglip_bar = _bar(quiet, desc="SigLIP (kept frames)", unit="frame")

    def on_dino(module, args, kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        if pixels is not None:
            if dino_bar.total is not None and dino_bar.n + len(pixels) > dino_bar.total:
                dino_bar.total = dino_bar.n + len(pixels)  # kept frames re-encoded after the cap
            dino_bar.update(len(pixels))

    def on_siglip(module, args):
        if args:
            siglip_bar.update(len(args[0]))

    handles = [
        base.dino_tower.register_forward_pre_hook(on_dino, with_kwargs=True),
        base.vision_tower.embeddings.register_forward_pre_hook(on_siglip),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        dino_bar.close()
        siglip_bar.close()


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
