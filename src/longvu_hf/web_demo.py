"""The web demo: a Gradio page to ask LongVU about a video, watch the answer stream and see what the compression kept.

    longvu demo --web                                   # offline: tiny RANDOM model, a generated example clip
    longvu demo --web --model LongVU_Qwen2_7B-hf        # a converted folder or a Hub id
    python space/app.py                                 # the Hub Space layout (the same code, see README)

The page takes an upload or a path/URL, a question and three options (fps, frame cap, token budget), streams the answer
token by token and shows the compression report beside it (the picture of `longvu report` and its numbers). Several
questions on the same video form a conversation: the decoded frames and the towers' work (DINOv2, SigLIP and the
aggregator, `model.encode_videos`) are kept and reused; only the compression runs again for every question, because
the question decides which frames keep full resolution (and the earlier turns, which are in the prompt, take tokens
from the video's budget).

Bad input (no video, an unreadable or audio-only file, an empty question, a video over the page's length limit, a
conversation that no longer fits the context) is answered with a message in the page; the server keeps running.

`gradio` is an optional dependency (`pip install "longvu-hf[demo]"`); everything except `build_app`/`launch` works
without it, so the request logic is testable on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import TextIteratorStreamer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUESTION = "What is happening in this video ?"
DEFAULT_FPS = 1.0
DEFAULT_MAX_NEW_TOKENS = 128
DEMO_MAX_NEW_TOKENS = 12  # the tiny random model's answer is noise: a short one keeps the page quick
MAX_DOWNLOAD_BYTES = 2 * 1024**3
PROGRESS_EVERY_S = 0.25  # at most this often a progress line is re-sent to the page
ERROR_MARK = "\u26a0\ufe0f **Error:**"  # how every message about bad input starts in the page


class DemoInputError(ValueError):
    """Something the person gave in the page cannot be used; the message says what to do instead (shown in the
    page, the server keeps running).

    Example:

    ```python
    >>> AskOptions.from_page(fps=0, max_frames=0, max_visual_tokens=0, max_new_tokens=64)
    DemoInputError: fps: must be above 0 (1 samples one frame per second, as LongVU was trained)
    ```
    """


@dataclasses.dataclass(frozen=True)
class AskOptions:
    """The per-request options of the page.

    Example:

    ```python
    >>> AskOptions(fps=0.5, max_frames=600, max_visual_tokens=2000, max_new_tokens=64)
    ```
    """

    fps: float = DEFAULT_FPS
    max_frames: int | None = None  # None: no cap (the reference's behaviour)
    max_visual_tokens: int | None = None  # None: whatever the context leaves after the prompt
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    @classmethod
    def from_page(cls, fps: Any, max_frames: Any, max_visual_tokens: Any, max_new_tokens: Any) -> AskOptions:
        """Validate the raw numbers of the page's fields; 0 or empty means "no cap" for the two caps."""

        def number(value: Any, name: str) -> float | None:
            if value is None or (isinstance(value, str) and not value.strip()):
                return None
            try:
                result = float(value)
            except (TypeError, ValueError):
                raise DemoInputError(f"{name}: {value!r} is not a number") from None
            if not math.isfinite(result):
                raise DemoInputError(f"{name}: must be a finite number")
            return result

        fps_value = number(fps, "fps")
        if fps_value is None or fps_value <= 0:
            raise DemoInputError("fps: must be above 0 (1 samples one frame per second, as LongVU was trained)")
        caps = []
        for value, name in ((max_frames, "frame cap"), (max_visual_tokens, "token budget")):
            cap = number(value, name)
            if cap is not None and (cap < 0 or cap != int(cap)):
                raise DemoInputError(f"{name}: must be a whole number, 0 for no cap")
            caps.append(int(cap) if cap else None)
        new_tokens = number(max_new_tokens, "answer length")
        if new_tokens is None or new_tokens < 1 or new_tokens != int(new_tokens):
            raise DemoInputError("answer length: must be a whole number of tokens, at least 1")
        return cls(fps=fps_value, max_frames=caps[0], max_visual_tokens=caps[1], max_new_tokens=int(new_tokens))


@dataclasses.dataclass
class DecodedVideo:
    """One video decoded and sampled by the processor, kept between the questions of a conversation.

    Example:

    ```python
    >>> decoded, from_cache = answerer.decode(Path("clip.mp4"), "clip.mp4", AskOptions(fps=1.0))
    >>> decoded.num_frames, decoded.pixel_inputs["pixel_values_videos"].dtype
    (60, torch.uint8)
    ```
    """

    key: tuple  # (file identity, fps, frame cap): another key means another decoding
    label: str  # how the page names the video
    pixel_inputs: dict  # pixel_values_videos(_dino), video_num_frames, video_sizes: uint8, on the CPU
    frame_times: list[float] | None
    duration_s: float | None
    decode_seconds: float
    features: Any = None  # the towers' output (`encode_videos`), made by the first question and reused after it

    @property
    def num_frames(self) -> int:
        return int(self.pixel_inputs["video_num_frames"][0])


@dataclasses.dataclass
class Conversation:
    """The questions asked about one video so far (the page's chat history).

    Example:

    ```python
    >>> Conversation(turns=[("What happens?", "A red square moves right.")]).chat_messages()
    [{'role': 'user', 'content': 'What happens?'}, {'role': 'assistant', 'content': 'A red square moves right.'}]
    ```
    """

    video_key: tuple | None = None
    turns: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def chat_messages(self) -> list[dict]:
        """The turns as the page's chat component shows them."""
        messages = []
        for question, answer in self.turns:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages


@dataclasses.dataclass
class PageUpdate:
    """What one step of a request changes in the page (yielded while decoding, encoding and generating).

    Example:

    ```python
    >>> for update in answerer.ask(None, "clip.mp4", "What happens?", Conversation(), AskOptions()):
    ...     print(update.status, update.answer)  # progress, then the answer growing, then "Done: ..."
    >>> update.done, update.report["compression"]["path"]
    (True, 'mix')
    ```
    """

    status: str
    answer: str = ""
    conversation: Conversation | None = None
    report_image: Image.Image | None = None
    report_summary: str | None = None
    report: dict | None = None
    error: bool = False
    done: bool = False
    seconds_to_first_token: float | None = None


@dataclasses.dataclass
class _Progress:
    stage: str  # "decoding" | "DINOv2 (all frames)" | "SigLIP (kept frames)"
    count: int


class _PageStreamer(TextIteratorStreamer):
    """transformers' `TextIteratorStreamer` whose queue is the request's event queue: answer pieces arrive as
    `("text", piece)` next to the progress events, so the page loop waits on one queue only."""

    def __init__(self, tokenizer, events: queue.Queue):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.text_queue = events
        self.pieces: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.pieces.append(text)
            self.text_queue.put(("text", text))


def _first_line(error: BaseException, limit: int = 300) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def _format_duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class VideoQuestionAnswerer:
    """The request logic of the page, without Gradio: resolve the video, decode it (cached per conversation), encode,
    compress and stream the answer, and build the compression report.

    Example:

    ```python
    >>> answerer = load_answerer(None)  # the tiny random model, offline
    >>> conversation = Conversation()
    >>> for update in answerer.ask(None, str(answerer.example_video), "What happens?", conversation, AskOptions()):
    ...     print(update.status)
    >>> update.answer, update.report["compression"]["num_visual_tokens"]
    ```
    """

    def __init__(
        self,
        model,
        processor,
        model_name: str,
        *,
        random_weights: bool = False,
        max_video_seconds: float | None = None,
        allow_local_paths: bool = True,
        example_video: Path | None = None,
    ):
        self.model = model
        self.processor = processor
        self.model_name = model_name
        self.random_weights = random_weights
        self.max_video_seconds = max_video_seconds
        self.allow_local_paths = allow_local_paths
        self.example_video = example_video
        # Downloads and the example clip; removed when the answerer goes (or at exit).
        self._workdir = tempfile.TemporaryDirectory(prefix="longvu-web-")
        self.workdir = Path(self._workdir.name)
        # One model, one request at a time (Gradio's queue runs one too; the lock also covers direct callers).
        self._lock = threading.Lock()
        # Only the last decoded video is kept: one hour at 1 fps is about 3 GB of uint8 frames.
        self._decoded: DecodedVideo | None = None
        self._downloads: dict[str, Path] = {}

    @property
    def on_cpu(self) -> bool:
        return self.model.device.type == "cpu"

    # -- the video ---------------------------------------------------------------------------------------------------

    def resolve_video(self, uploaded: str | None, location: str | None) -> tuple[Path, str]:
        """The local file (or folder of frames) to decode and how to name it; an upload wins over the text field."""
        location = (location or "").strip()
        if uploaded:
            path = Path(uploaded)
            return path, path.name
        if not location:
            raise DemoInputError("No video: upload one, or type a path or an http(s) URL into the box below it.")
        if location.startswith(("http://", "https://")):
            return self._download(location), location
        path = Path(location).expanduser()
        is_example = self.example_video is not None and path.resolve() == Path(self.example_video).resolve()
        if not self.allow_local_paths and not is_example:
            raise DemoInputError(
                "This page reads uploads and http(s) URLs only (paths on the server are turned off): upload the video "
                "or give its URL."
            )
        if not path.exists():
            raise DemoInputError(f"No such file or folder on the server: {location}")
        return path, location

    def _download(self, url: str) -> Path:
        if url in self._downloads and self._downloads[url].is_file():
            return self._downloads[url]
        name = Path(urllib.parse.urlparse(url).path).name or "video"
        target = self.workdir / "downloads" / f"{len(self._downloads)}-{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(target, "wb") as out:
                copied = 0
                while chunk := response.read(1 << 20):
                    copied += len(chunk)
                    if copied > MAX_DOWNLOAD_BYTES:
                        raise DemoInputError(
                            f"{url}: larger than {MAX_DOWNLOAD_BYTES // 1024**3} GB; download and trim it first"
                        )
                    out.write(chunk)
        except DemoInputError:
            target.unlink(missing_ok=True)
            raise
        except Exception as error:  # DNS, HTTP status, timeout, no network: all end the same way
            target.unlink(missing_ok=True)
            raise DemoInputError(f"Could not download {url} ({_first_line(error)})") from None
        self._downloads[url] = target
        return target

    def inspect_video(self, path: Path, options: AskOptions) -> tuple[float | None, int]:
        """Open the video without decoding it: its duration (checked against the page's limit) and how many frames
        the processor will sample. Unreadable, audio-only and empty files end here with their reason."""
        from .processing.video_decoding import open_frame_source

        video_processor = self.processor.video_processor
        try:
            source = open_frame_source(str(path), getattr(video_processor, "video_backend", None))
            metadata = source.metadata
            sampled = len(video_processor.sample_frames(metadata, fps=options.fps, max_frames=options.max_frames))
        except (ValueError, OSError, RuntimeError, ImportError) as error:
            raise DemoInputError(
                f"Cannot read this video: {_first_line(error)} Upload a video file (mp4, webm, mkv, mov, avi, gif)."
            ) from None
        duration = metadata.duration
        if self.max_video_seconds is not None and duration is not None and duration > self.max_video_seconds:
            raise DemoInputError(
                f"This video is {_format_duration(duration)} long; this page accepts videos up to "
                f"{_format_duration(self.max_video_seconds)}. Trim it, or run the demo on your own machine "
                "(`longvu demo --web --model ...`) for longer videos."
            )
        if sampled == 0:
            raise DemoInputError("No frame would be sampled from this video: raise fps.")
        return duration, sampled

    def decode(
        self, path: Path, label: str, options: AskOptions, on_frames: Callable[[int], None] | None = None
    ) -> tuple[DecodedVideo, bool]:
        """The sampled, resized frames of `path` and whether they came from the cache (same file and options)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, options.fps, options.max_frames)
        if self._decoded is not None and self._decoded.key == key:
            return self._decoded, True
        self._decoded = None  # let the previous video's frames go before decoding the next one
        video_processor = self.processor.video_processor
        started = time.perf_counter()
        progress = video_processor.frame_progress(on_frames) if on_frames else contextlib.nullcontext()
        try:
            with progress:
                out = video_processor(
                    str(path), fps=options.fps, max_frames=options.max_frames, do_sample_frames=True,
                    return_metadata=True, return_tensors="pt",
                )
        except (ValueError, OSError, RuntimeError) as error:
            raise DemoInputError(f"Cannot read this video: {_first_line(error)}") from None
        metadata = out.pop("video_metadata")[0]
        times = None
        with contextlib.suppress(Exception):  # frame folders without a frame rate have no times
            times = [float(t) for t in metadata.timestamps]
        self._decoded = DecodedVideo(
            key=key, label=label, pixel_inputs=dict(out), frame_times=times, duration_s=metadata.duration,
            decode_seconds=time.perf_counter() - started,
        )
        return self._decoded, False

    # -- the prompt --------------------------------------------------------------------------------------------------

    def text_inputs(self, conversation: Conversation, question: str) -> dict:
        """`input_ids`/`attention_mask` of the chat so far plus the new question, with the video (one placeholder) in
        the first user turn; tokenized as the processor's `apply_chat_template` does, without decoding the video."""
        messages = []
        for index, (asked, answered) in enumerate([*conversation.turns, (question, None)]):
            content = [{"type": "text", "text": asked}]
            if index == 0:
                content.insert(0, {"type": "video"})
            messages.append({"role": "user", "content": content})
            if answered is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
        from .cli.pipeline import tokenize_chat

        return tokenize_chat(self.processor, messages)

    def token_budget(self, text_inputs: dict, options: AskOptions) -> dict:
        """The call's token settings (`cli.effective_budget`: the same rule as the command line), with the
        `CompressionSettings` to pass to `generate`; refuses a prompt that leaves no room for the video."""
        from .cli import CLIError, effective_budget

        config = self.model.config
        placeholders = int((text_inputs["input_ids"] == config.video_token_id).sum())
        prompt_tokens = int(text_inputs["attention_mask"].sum()) - placeholders
        try:
            return effective_budget(config, prompt_tokens, max_visual_tokens=options.max_visual_tokens)
        except CLIError:
            raise DemoInputError(
                f"The conversation is now {prompt_tokens} tokens, which leaves no room for the video in the model's "
                f"context of {config.max_context_length} tokens: press \"Clear conversation\" and ask again."
            ) from None

    # -- one request -------------------------------------------------------------------------------------------------

    def ask(
        self,
        uploaded: str | None,
        location: str | None,
        question: str | None,
        conversation: Conversation,
        options: AskOptions,
    ) -> Iterator[PageUpdate]:
        """Answer one question, yielding page updates: progress while decoding and encoding, then the answer piece by
        piece, then the report. Bad input yields one update with `error=True` (nothing raised)."""
        started = time.perf_counter()
        question = (question or "").strip()
        try:
            if not question:
                raise DemoInputError("Type a question first.")
            path, label = self.resolve_video(uploaded, location)
            duration, sampled = self.inspect_video(path, options)
        except DemoInputError as error:
            yield PageUpdate(status=f"{ERROR_MARK} {error}", conversation=conversation, error=True, done=True)
            return

        events: queue.Queue = queue.Queue()
        worker = threading.Thread(
            target=self._answer_in_background,
            args=(path, label, question, conversation, options, events),
            name="longvu-web-request", daemon=True,
        )
        worker.start()
        yield from self._follow(events, worker, started, sampled, duration, question, conversation)

    def _answer_in_background(
        self, path: Path, label: str, question: str, conversation: Conversation, options: AskOptions,
        events: queue.Queue,
    ) -> None:
        """The worker thread: decode (or reuse), encode + compress + generate, report. Everything goes to `events`.

        The lock is taken here, not in the page loop: a request whose page was closed still finishes its `generate`
        before the next one starts."""
        with self._lock:
            self._answer(path, label, question, conversation, options, events)

    def _answer(
        self, path: Path, label: str, question: str, conversation: Conversation, options: AskOptions,
        events: queue.Queue,
    ) -> None:
        import torch

        from .report import build_report, make_thumbnails, render_png

        try:
            decoded, reused = self.decode(path, label, options, lambda n: events.put(_Progress("decoding", n)))
            same_video = conversation.video_key == decoded.key
            history = conversation if same_video else Conversation()
            text = self.text_inputs(history, question)
            budget = self.token_budget(text, options)
            settings = budget.pop("settings")
            events.put(("encoding", (decoded, reused, same_video, history, budget)))
            streamer = _PageStreamer(self.processor.tokenizer, events)
            text = {name: tensor.to(self.model.device) for name, tensor in text.items()}
            with torch.no_grad(), self._encoding_progress(events):
                if decoded.features is None:  # the towers, once per decoded video
                    # The frames stay on the CPU: the model moves them to its device chunk by chunk.
                    decoded.features = self.model.encode_videos(**decoded.pixel_inputs, compression_settings=settings)
                output = self.model.generate(
                    **text, video_features=decoded.features, max_new_tokens=options.max_new_tokens, do_sample=False,
                    streamer=streamer, compression_settings=settings, return_dict_in_generate=True,
                )
            events.put(("answered", None))
            compression = output.compression[0]
            answer = "".join(streamer.pieces).strip()
            report = build_report(
                compression, video=decoded.label, question=question, model_name=self.model_name, fps=options.fps,
                frame_times=decoded.frame_times, answer=answer, random_weights=self.random_weights, budget=budget,
            )
            frames = decoded.pixel_inputs["pixel_values_videos"][: decoded.num_frames]
            size = tuple(int(v) for v in decoded.pixel_inputs["video_sizes"][0])
            picture = render_png(report, make_thumbnails(report, frames, size))
            events.put(("done", (decoded, history, answer, report, picture)))
        except DemoInputError as error:
            events.put(("error", str(error)))
        except Exception as error:  # anything else: shown in the page too, and the server stays up
            events.put(("error", f"{type(error).__name__}: {_first_line(error)}"))

    @contextlib.contextmanager
    def _encoding_progress(self, events: queue.Queue) -> Iterator[None]:
        """Progress events for the frames entering DINOv2 (all of them) and SigLIP (the kept ones), chunk by chunk."""
        base = self.model.model

        def counter(stage: str):
            def hook(module, args, kwargs):
                pixels = kwargs.get("pixel_values", args[0] if args else None)
                if pixels is not None:
                    events.put(_Progress(stage, len(pixels)))

            return hook

        handles = [
            base.dino_tower.register_forward_pre_hook(counter("DINOv2 (all frames)"), with_kwargs=True),
            base.vision_tower.embeddings.register_forward_pre_hook(counter("SigLIP (kept frames)"), with_kwargs=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _follow(
        self, events: queue.Queue, worker: threading.Thread, started: float, sampled: int, duration: float | None,
        question: str, conversation: Conversation,
    ) -> Iterator[PageUpdate]:
        """Turn the worker's events into page updates until it is done (or failed)."""
        counts: dict[str, int] = {}
        answer, first_token_s, note, last_sent = "", None, "", 0.0
        length = f" ({_format_duration(duration)})" if duration else ""
        slow = " On CPU, long videos take a while: progress is shown here." if self.on_cpu else ""
        while True:
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                if not worker.is_alive() and events.empty():
                    yield PageUpdate(status=f"{ERROR_MARK} the request stopped without an answer; try again.",
                                     conversation=conversation, error=True, done=True)
                    return
                continue
            now = time.perf_counter()
            if isinstance(event, _Progress):
                new_stage = event.stage not in counts  # a new stage is always shown, however quick
                counts[event.stage] = counts.get(event.stage, 0) + event.count
                if new_stage or now - last_sent >= PROGRESS_EVERY_S:
                    last_sent = now
                    steps = ", ".join(f"{stage} {n}" + (f"/{sampled}" if stage != "SigLIP (kept frames)" else "")
                                      for stage, n in counts.items())
                    yield PageUpdate(status=f"Working on the video{length}: {steps} frames.{slow}", answer=answer,
                                     conversation=conversation)
                continue
            kind, payload = event
            if kind == "text":
                if first_token_s is None:
                    first_token_s = now - started
                answer += payload
                yield PageUpdate(status=f"Answering... (first token after {first_token_s:.1f} s) {note}",
                                 answer=answer, conversation=conversation, seconds_to_first_token=first_token_s)
            elif kind == "encoding":
                decoded, reused, same_video, history, budget = payload
                note = _reencoding_note(decoded, reused, same_video, history, budget)
                yield PageUpdate(status=f"Encoding and compressing {decoded.num_frames} frames{length}...{slow} "
                                 f"{note}", answer=answer, conversation=conversation)
            elif kind == "error":
                yield PageUpdate(status=f"{ERROR_MARK} {payload}", answer=answer, conversation=conversation,
                                 error=True, done=True)
                return
            elif kind == "done":
                decoded, history, final_answer, report, picture = payload
                updated = Conversation(video_key=decoded.key, turns=[*history.turns, (question, final_answer)])
                total = now - started
                timing = (f"first token after {first_token_s:.1f} s, " if first_token_s is not None else "")
                yield PageUpdate(
                    status=f"Done: {timing}{total:.1f} s in all. {note}", answer=final_answer, conversation=updated,
                    report_image=picture, report_summary=_summary_markdown(report, decoded), report=report,
                    done=True, seconds_to_first_token=first_token_s,
                )
                return


def _reencoding_note(decoded: DecodedVideo, reused: bool, same_video: bool, history: Conversation,
                     budget: dict) -> str:
    """What this question re-uses and what runs again, for the status line."""
    frames = f"{decoded.num_frames} frames"
    if reused:
        decoding = f"decoded {frames} reused (same video and options)"
    else:
        decoding = f"{frames} decoded in {decoded.decode_seconds:.1f} s"
    if same_video and history.turns:
        return (f"Question {len(history.turns) + 1} on {decoded.label}: {decoding}; the towers' output (DINOv2, SigLIP, "
                f"aggregator) reused too; the compression ran again, because the question picks the full-resolution "
                f"frames and the {len(history.turns)} earlier turn(s) in the prompt ({budget['prompt_tokens']} tokens) "
                "shrink the video's budget.")
    return f"New conversation about {decoded.label}: {decoding}."


def _summary_markdown(report: dict, decoded: DecodedVideo) -> str:
    from .report import summary_lines

    comp = report["compression"]
    lines = [f"- {line}" for line in summary_lines(report)]
    lines.append(f"- prompt: {report['budget'].get('prompt_tokens')} tokens; compression path: `{comp['path']}`")
    if decoded.duration_s:
        lines.append(f"- video: {_format_duration(decoded.duration_s)}, {decoded.num_frames} frames sampled")
    if report.get("random_weights"):
        lines.insert(0, "**Random weights: the report shows the mechanics; the answer is noise.**")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Loading a model
# --------------------------------------------------------------------------------------------------------------------


def load_answerer(
    model: str | None,
    *,
    device: str = "auto",
    max_video_seconds: float | None = None,
    allow_local_paths: bool = True,
    quiet: bool = True,
) -> VideoQuestionAnswerer:
    """A `VideoQuestionAnswerer` for a converted folder or Hub id, or (`model=None`) for the CLI's tiny random demo
    model with its generated example clip (offline). Model errors raise the CLI's one-line `CLIError`."""
    import torch

    from .cli import demo_model, demo_tokenizer, load_model_and_processor, resolve_model, write_demo_clip

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if model is None:
        from . import LongVUProcessor, LongVUVideoProcessor

        tokenizer = demo_tokenizer()
        network = demo_model(tokenizer).to(device)
        processor = LongVUProcessor(tokenizer, LongVUVideoProcessor())
        name, random_weights = "tiny-random-longvu (random weights)", True
    else:
        folder = resolve_model(model, quiet)
        # bfloat16 on GPUs (float16 overflows on long videos); on the CPU the checkpoint's own dtype.
        dtype = torch.bfloat16 if device.startswith("cuda") else "auto"
        network, processor = load_model_and_processor(folder, model, device, dtype, quiet)
        name, random_weights = model, False
    answerer = VideoQuestionAnswerer(
        network, processor, name, random_weights=random_weights, max_video_seconds=max_video_seconds,
        allow_local_paths=allow_local_paths,
    )
    with contextlib.suppress(ImportError):  # the example clip is written with PyAV (the [video] extra)
        answerer.example_video = write_demo_clip(answerer.workdir / "example-90s.mp4")
    return answerer


# --------------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------------


def _import_gradio():
    try:
        import gradio
    except ImportError:
        raise ImportError('The web demo needs Gradio: pip install "longvu-hf[demo]"') from None
    return gradio


def _banner(answerer: VideoQuestionAnswerer) -> str:
    lines = [f"# LongVU: ask a video\nModel: `{answerer.model_name}` on {answerer.model.device.type.upper()}."]
    if answerer.random_weights:
        lines.append("**This is the tiny model with RANDOM WEIGHTS:** it shows the mechanics (decoding, frame "
                     "selection, resolution mixing, token compression); its answers are noise.")
    if answerer.on_cpu:
        lines.append("Running on CPU: every sampled frame goes through DINOv2, so long videos are slow (minutes "
                     "before the first word for a long video with a full-size model). Progress is shown under the "
                     "question.")
    if answerer.max_video_seconds is not None:
        lines.append(f"Videos up to {_format_duration(answerer.max_video_seconds)} are accepted here.")
    return "\n\n".join(lines)


def build_app(answerer: VideoQuestionAnswerer):
    """The Gradio page (a `gradio.Blocks`) around `answerer`; `launch` serves it."""
    gr = _import_gradio()

    def on_ask(uploaded, location, question, conversation, fps, max_frames, max_visual_tokens, max_new_tokens):
        conversation = conversation or Conversation()
        try:
            options = AskOptions.from_page(fps, max_frames, max_visual_tokens, max_new_tokens)
        except DemoInputError as error:
            yield conversation.chat_messages(), f"{ERROR_MARK} {error}", conversation, *[gr.update()] * 3
            return
        for update in answerer.ask(uploaded, location, question, conversation, options):
            shown = update.conversation or conversation
            chat = shown.chat_messages()
            if not update.done and update.answer:  # the turn being answered, streamed into the chat
                chat += [{"role": "user", "content": question}, {"role": "assistant", "content": update.answer}]
            report = update.report_image is not None
            yield (
                chat,
                update.status,
                shown,
                update.report_image if report else gr.update(),
                update.report_summary if report else gr.update(),
                update.report if report else gr.update(),
            )

    def on_clear():
        return [], "Conversation cleared: the next question starts a new one (the decoded frames stay cached).", \
            Conversation()

    with gr.Blocks(title="LongVU: ask a video") as page:
        gr.Markdown(_banner(answerer), elem_id="banner")
        conversation_state = gr.State(Conversation())
        with gr.Row():
            with gr.Column(scale=1):
                # gr.File, not gr.Video: every file reaches our checks (gr.Video would transcode or refuse some
                # files with its own messages), so a broken or audio-only upload gets the page's explanation.
                uploaded = gr.File(label="Video (an upload is used instead of the box below)", type="filepath",
                                   elem_id="video-upload")
                location = gr.Textbox(
                    label="...or a path on the server or an http(s) URL" if answerer.allow_local_paths
                    else "...or an http(s) URL",
                    value=str(answerer.example_video) if answerer.example_video else "",
                    elem_id="video-location",
                )
                with gr.Accordion("Options", open=True):
                    with gr.Row():
                        fps = gr.Number(label="fps (frames sampled per second)", value=DEFAULT_FPS, minimum=0,
                                        elem_id="option-fps")
                        max_frames = gr.Number(label="frame cap (0: none)", value=0, precision=0, minimum=0,
                                               elem_id="option-max-frames")
                    with gr.Row():
                        max_visual_tokens = gr.Number(label="token budget for the video (0: what the context leaves)",
                                                      value=0, precision=0, minimum=0, elem_id="option-budget")
                        max_new_tokens = gr.Number(
                            label="answer length (tokens)", precision=0, minimum=1, elem_id="option-new-tokens",
                            value=DEMO_MAX_NEW_TOKENS if answerer.random_weights else DEFAULT_MAX_NEW_TOKENS,
                        )
            with gr.Column(scale=1):
                chat = gr.Chatbot(label="Conversation (questions on the same video)", elem_id="chat", height=320)
                question = gr.Textbox(label="Question", value=DEFAULT_QUESTION, elem_id="question")
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                    clear_button = gr.Button("Clear conversation", elem_id="clear")
                status = gr.Markdown("Upload a video (or use the path), type a question, press Ask.",
                                     elem_id="status")
        with gr.Row():
            with gr.Column(scale=2):
                report_image = gr.Image(label="What the compression kept", type="pil", elem_id="report-image",
                                        interactive=False)
            with gr.Column(scale=1):
                report_summary = gr.Markdown(elem_id="report-summary")
                with gr.Accordion("The report as JSON", open=False):
                    report_json = gr.JSON(elem_id="report-json")

        inputs = [uploaded, location, question, conversation_state, fps, max_frames, max_visual_tokens,
                  max_new_tokens]
        outputs = [chat, status, conversation_state, report_image, report_summary, report_json]
        ask_button.click(on_ask, inputs, outputs, concurrency_limit=1)
        question.submit(on_ask, inputs, outputs, concurrency_limit=1)
        clear_button.click(on_clear, None, [chat, status, conversation_state])
    return page


def launch(
    model: str | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    share: bool = False,
    max_video_seconds: float | None = None,
    allow_local_paths: bool = True,
    device: str = "auto",
    quiet: bool = False,
    block: bool = True,
):
    """Load the model (`None`: the tiny random demo model, offline) and serve the page; returns the `gradio.Blocks`.

    `max_video_seconds` refuses longer videos with a message in the page (for a shared Space); `allow_local_paths=False`
    makes the text field accept http(s) URLs only (a public page must not read the server's files). With
    `block=False` the server runs in a background thread (tests); `page.close()` stops it.
    """
    _import_gradio()  # fail before loading a model
    answerer = load_answerer(model, device=device, max_video_seconds=max_video_seconds,
                             allow_local_paths=allow_local_paths, quiet=quiet)
    page = build_app(answerer)
    page.queue(default_concurrency_limit=1)
    allowed = [str(answerer.example_video.parent)] if answerer.example_video else None
    page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=quiet,
                allowed_paths=allowed)
    page.answerer = answerer  # for tests and callers that want the loaded model
    return page


__all__ = ["AskOptions", "Conversation", "DemoInputError", "VideoQuestionAnswerer", "build_app", "launch",
           "load_answerer"]
