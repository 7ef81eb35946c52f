"""The web demo: a Gradio page to ask LongVU about a video, watch the answer stream and see what the compression kept.

    longvu demo --web                                   # offline: tiny RANDOM model, a generated example clip
    longvu demo --web --model LongVU_Qwen2_7B-hf        # a converted folder or a Hub id
    python space/app.py                                 # the Hub Space layout (the same code, see README)

The page takes an upload or an http(s) URL (paths on the server only with `allow_local_paths=True`), a question and
three options (fps, frame cap, token budget), streams the answer token by token and shows the compression report
beside it (the picture of `longvu report` and its numbers). The work is the library's (`longvu_hf.session`): the video
is streamed into the towers as it is decoded (the host never holds all its frames; small thumbnails are kept for the
report), once per video and options. Several questions on the same video form a conversation: the towers' work
(DINOv2, SigLIP and the aggregator) is reused; only the compression runs again for every question, because the
question decides which frames keep full resolution (and the earlier turns, which are in the prompt, take tokens from
the video's budget). The page imports the library only (`loading`, `session`, `tiny`), never the command line.

Anyone who reaches the page is a stranger (README, "Running the page in public"). Every input goes through
`longvu_hf.media_inputs` under the page's `InputPolicy` (public addresses only, no server paths unless asked for,
size caps, container allow-lists), and `check_decode_bounds` bounds the frames before any decoding; one deadline
bounds the whole request. Downloads live in a private working folder that Gradio never serves and are deleted after
the request; uploads are deleted when refused or no longer in use; everything of the page's is deleted at exit (and
folders left by a killed server at the next start). Messages name the user's input, never a path on the server.

Bad input (no video, a refused URL or file, an unreadable or audio-only file, an empty question, options out of
range, a video over the page's limits, a conversation that no longer fits the context) is answered with a message in
the page; the server keeps running.

`gradio` is an optional dependency (`pip install "longvu-hf[demo]"`); everything except `build_app`/`launch` works
without it, so the request logic is testable on its own.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import TextIteratorStreamer

from .media_inputs import InputPolicy, InputRefused, MediaSource, check_decode_bounds, resolve_media
from .session import BudgetError, TokenBudget, VideoReadError, VideoSession

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUESTION = "What is happening in this video ?"
DEFAULT_FPS = 1.0
DEFAULT_MAX_NEW_TOKENS = 128
DEMO_MAX_NEW_TOKENS = 12  # the tiny random model's answer is noise: a short one keeps the page quick
MAX_NEW_TOKENS_LIMIT = 1024  # the longest answer the page asks for
DEFAULT_REQUEST_SECONDS = 600.0  # one deadline for a whole request: download, decoding, towers, answer
DEFAULT_QUEUE_SIZE = 16  # requests waiting for the page's one worker; more are turned away by Gradio
CACHE_SWEEP = (600, 3600)  # Gradio's `delete_cache`: every 10 min, its files older than an hour go
KEPT_UPLOADS = 3  # uploads of the latest answered requests stay for follow-up questions; older ones are deleted
EXAMPLE_NAME = "example-90s.mp4"  # what the text box says for the generated example clip (never its server path)
PROGRESS_EVERY_S = 0.25  # at most this often a progress line is re-sent to the page
ERROR_MARK = "\u26a0\ufe0f **Error:**"  # how every message about bad input starts in the page
_STOP_GRACE_S = 30.0  # after the deadline, how long the page waits for the worker to notice before it gives up


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
    max_frames: int | None = None  # None: no cap of the user's (the page's policy still bounds the frames)
    max_visual_tokens: int | None = None  # None: whatever the context leaves after the prompt
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    @classmethod
    def from_page(
        cls,
        fps: Any,
        max_frames: Any,
        max_visual_tokens: Any,
        max_new_tokens: Any,
        *,
        max_fps: float | None = None,
        frame_limit: int | None = None,
        visual_tokens_limit: int | None = None,
        new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT,
    ) -> AskOptions:
        """Validate the raw numbers of the page's fields; 0 or empty means "no cap" for the two caps. The limits
        (the page's policy and the model's context) refuse larger values with a message naming the field."""

        def number(value: Any, name: str) -> float | None:
            if value is None or (isinstance(value, str) and not value.strip()):
                return None
            if isinstance(value, bool):
                raise DemoInputError(f"{name}: {value!r} is not a number")
            try:
                result = float(value)
            except (TypeError, ValueError, OverflowError):
                raise DemoInputError(f"{name}: {str(value)[:40]!r} is not a number") from None
            if not math.isfinite(result):
                raise DemoInputError(f"{name}: must be a finite number")
            return result

        def whole(value: Any, name: str, lowest: int, limit: int | None, hint: str) -> int | None:
            result = number(value, name)
            if result is None:
                return None
            if result < lowest or result != int(result):
                raise DemoInputError(f"{name}: must be a whole number{hint}")
            if limit is not None and result > limit:
                raise DemoInputError(f"{name}: at most {limit:,} here")
            return int(result)

        fps_value = number(fps, "fps")
        if fps_value is None or fps_value <= 0:
            raise DemoInputError("fps: must be above 0 (1 samples one frame per second, as LongVU was trained)")
        if max_fps is not None and fps_value > max_fps:
            raise DemoInputError(f"fps: at most {max_fps:g} on this page (1 is what LongVU was trained with)")
        frames = whole(max_frames, "frame cap", 0, frame_limit, ", 0 for no cap")
        tokens = whole(max_visual_tokens, "token budget", 0, visual_tokens_limit, ", 0 for no cap")
        new_tokens = whole(max_new_tokens, "answer length", 1, new_tokens_limit, " of tokens, at least 1")
        if new_tokens is None:
            raise DemoInputError("answer length: must be a whole number of tokens, at least 1")
        return cls(fps=fps_value, max_frames=frames or None, max_visual_tokens=tokens or None,
                   max_new_tokens=new_tokens)


@dataclasses.dataclass
class DecodedVideo:
    """One video decoded and encoded (streamed into the towers: a `VideoSession`), kept between the questions of a
    conversation.

    Example:

    ```python
    >>> decoded, from_cache = answerer.decode(request, AskOptions(fps=1.0))
    >>> decoded.num_frames, decoded.session.info.frame_times[:2]
    (60, [0.0, 1.0])
    ```
    """

    key: tuple  # (where it came from, its identity, fps, frame cap): another key means another decoding
    label: str  # how the page names the video (the user's input, never a server path)
    session: VideoSession  # the towers' output and the report's thumbnails (not the frames)
    duration_s: float | None
    decode_seconds: float  # decoding and the towers (they overlap)

    @property
    def num_frames(self) -> int:
        return self.session.info.num_frames

    @property
    def frame_times(self) -> list[float] | None:
        return self.session.info.frame_times


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
    >>> for update in answerer.ask(None, EXAMPLE_NAME, "What happens?", Conversation(), AskOptions()):
    ...     print(update.status, update.answer)  # progress, then the answer growing, then "Done: ..."
    >>> update.done, update.report["compression"]["path"]  # the report's JSON (`CompressionReport.to_dict()`)
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
class VideoRequest:
    """The video of one request, resolved and checked, before any frame is decoded.

    `source` is None when the frames of this URL are already decoded (a follow-up question: nothing is fetched
    again). `upload` is the user's upload when the page owns it (it lives in the page's upload folder).

    Example:

    ```python
    >>> request = answerer.resolve_video(None, EXAMPLE_NAME, AskOptions(fps=1.0))
    >>> request.label, request.kind, request.sampled
    ('example-90s.mp4', 'video', 90)
    ```
    """

    key: tuple
    label: str
    kind: str  # "video" or "frames"
    fps: float | None  # None for a folder of frames: every frame (a frame cap still applies)
    max_frames: int | None
    sampled: int  # the frames decoding will produce (checked against the policy)
    duration: float | None
    source: MediaSource | None = None
    upload: Path | None = None


@dataclasses.dataclass
class _Progress:
    stage: str  # "decoding" | "DINOv2 (all frames)" | "SigLIP (kept frames)"
    count: int


class _RequestTooLong(DemoInputError):
    """The request ran past its deadline (raised from the progress callbacks, which stops the work in progress)."""


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


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def has_random_weights(model) -> bool:
    """Whether `model` is the tiny model with random weights (`longvu_hf.tiny` marks its config), whose answers are
    noise: the page says so plainly."""
    return bool(getattr(getattr(model, "config", None), "random_weights", False))


def reachable_from_other_machines(host: str, share: bool) -> str | None:
    """Why a page served on `host` (with `share`) can be reached from other machines, or None when only this machine
    reaches it (a loopback address or "localhost")."""
    if share:
        return "--share (a public gradio.live link)"
    name = (host or "").strip().strip("[]").lower()
    if name == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    return f"--host {host or '(all interfaces)'} (other machines can reach the page)"


# --------------------------------------------------------------------------------------------------------------------
# The page's private folders
# --------------------------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its folder alone
    return True


class PageFolders:
    """The page's private working folders, one set per process, under `<temp>/longvu-web-<user id>/run-<pid>-*/`
    (mode 0700): `downloads/` (fetched videos, Gradio never serves it), `gradio/` (Gradio's uploads and cache) and
    `example/` (the generated example clip). `close()` deletes them all; so does the end of the process. Folders of
    runs whose process is gone (a killed server) are deleted when the next one starts.

    Example:

    ```python
    >>> folders = PageFolders()
    >>> folders.downloads.is_dir(), folders.gradio.parent == folders.run
    (True, True)
    >>> folders.close()
    ```
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = self._private_root(Path(root) if root is not None else None)
        self._remove_stale_runs()
        self.run = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=self.root))
        self.downloads = self.run / "downloads"
        self.gradio = self.run / "gradio"
        self.example = self.run / "example"
        for folder in (self.downloads, self.gradio, self.example):
            folder.mkdir(mode=0o700)
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.run), True)  # also at interpreter exit

    @staticmethod
    def _private_root(root: Path | None) -> Path:
        """`<temp>/longvu-web-<uid>`, ours and private; a fresh folder if that name is taken by someone else (a
        shared /tmp must not let another user plant a folder or link there)."""
        uid = os.getuid() if hasattr(os, "getuid") else 0
        root = root or Path(tempfile.gettempdir()) / f"longvu-web-{uid}"
        try:
            root.mkdir(mode=0o700, exist_ok=True)
            info = root.lstat()
            if root.is_symlink() or not root.is_dir() or (hasattr(os, "getuid") and info.st_uid != uid):
                raise PermissionError(root)
            os.chmod(root, 0o700)
        except OSError:
            root = Path(tempfile.mkdtemp(prefix=f"longvu-web-{uid}-"))
        return root

    def _remove_stale_runs(self) -> None:
        for entry in self.root.glob("run-*-*"):
            match = re.fullmatch(r"run-(\d+)-.+", entry.name)
            if match and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)

    def holds(self, path: str | os.PathLike) -> bool:
        """Whether `path` lies inside this run's folders."""
        try:
            Path(path).resolve().relative_to(self.run.resolve())
        except ValueError:
            return False
        return True

    def close(self) -> None:
        """Delete every folder of this run (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


# Absolute paths in a message: a slash not preceded by a word character, a colon, a dot or another slash (so URLs
# and relative paths stay), then at least one more path part.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:./])(?:~|/)[^\s'\"`,;()\[\]]*/[^\s'\"`,;()\[\]]*")


def public_message(text: str, known: dict[str, str] | None = None, keep: tuple[str, ...] = ()) -> str:
    """`text` with every server path replaced: the paths in `known` by what the user called them, any other
    absolute path by "(a file on the server)". Paths the user typed (`keep`) stay as they are."""
    known = dict(known or {})
    for path, label in sorted(known.items(), key=lambda item: -len(item[0])):
        if path:
            text = text.replace(path, label)

    def hide(match: re.Match) -> str:
        found = match.group(0).rstrip(".:")
        rest = match.group(0)[len(found):]
        if any(found == kept or found.startswith(kept.rstrip("/") + "/") for kept in keep if kept.startswith(("/", "~"))):
            return match.group(0)
        if found in known.values():
            return match.group(0)
        return "(a file on the server)" + rest

    return _ABSOLUTE_PATH.sub(hide, text)


# --------------------------------------------------------------------------------------------------------------------
# The request logic
# --------------------------------------------------------------------------------------------------------------------


class VideoQuestionAnswerer:
    """The request logic of the page, without Gradio: resolve the video under the page's policy, bound its decoding,
    decode it (cached per conversation), encode, compress and stream the answer, and build the compression report.

    `policy` defaults to `InputPolicy.public_page()` (no server paths, small caps), with server paths of any size added
    by `allow_local_paths=True` (the other caps stay); `max_video_seconds` sets its length limit. `max_request_seconds` bounds one request.

    Example:

    ```python
    >>> answerer = load_answerer(None)  # the tiny random model, offline
    >>> conversation = Conversation()
    >>> for update in answerer.ask(None, EXAMPLE_NAME, "What happens?", conversation, AskOptions()):
    ...     print(update.status)
    >>> update.answer, update.report["compression"]["num_visual_tokens"]
    >>> answerer.close()  # deletes the page's folders (also done at exit)
    ```
    """

    def __init__(
        self,
        model,
        processor,
        model_name: str,
        *,
        random_weights: bool | None = None,
        policy: InputPolicy | None = None,
        max_video_seconds: float | None = None,
        allow_local_paths: bool = False,
        max_request_seconds: float | None = DEFAULT_REQUEST_SECONDS,
        example_video: Path | None = None,
        folders: PageFolders | None = None,
    ):
        self.model = model
        self.processor = processor
        self.model_name = model_name
        self.random_weights = has_random_weights(model) if random_weights is None else random_weights
        if policy is None:
            # Paths on this machine are the operator's own files (no size cap); frames, fps, seconds and pixels stay
            # bounded as on any page, since whoever reaches it asks for the work.
            policy = (InputPolicy.public_page(allow_local_paths=True, max_local_bytes=None) if allow_local_paths
                      else InputPolicy.public_page())
        if max_video_seconds is not None:
            policy = dataclasses.replace(policy, max_seconds=float(max_video_seconds))
        self.policy = policy
        self.max_request_seconds = max_request_seconds
        self.example_video = example_video
        self.folders = folders or PageFolders()
        # One model, one request at a time (Gradio's queue runs one too; the lock also covers direct callers).
        self._lock = threading.Lock()
        # Only the last encoded video is kept (its features and thumbnails; the frames are never all held).
        self._decoded: DecodedVideo | None = None
        self._kept_uploads: collections.OrderedDict[Path, None] = collections.OrderedDict()
        self._uploads_lock = threading.Lock()  # the worker of a request may still end while the next one starts
        # Set by `build_app`: uploads must come from Gradio's upload folder (direct callers may pass any file).
        self.uploads_only_from: Path | None = None

    @property
    def allow_local_paths(self) -> bool:
        return self.policy.allow_local_paths

    @property
    def max_video_seconds(self) -> float | None:
        return self.policy.max_seconds

    @property
    def on_cpu(self) -> bool:
        return self.model.device.type == "cpu"

    def close(self) -> None:
        """Let the decoded frames go and delete the page's folders (downloads, uploads, Gradio's cache, example)."""
        self._decoded = None
        self.folders.close()

    def option_limits(self) -> dict:
        """The limits `AskOptions.from_page` applies on this page (from the policy and the model's context)."""
        return {"max_fps": self.policy.max_fps, "frame_limit": self.policy.max_frames,
                "visual_tokens_limit": int(self.model.config.max_context_length),
                "new_tokens_limit": MAX_NEW_TOKENS_LIMIT}

    # -- the video ---------------------------------------------------------------------------------------------------

    def resolve_video(self, uploaded: str | None, location: str | None, options: AskOptions) -> VideoRequest:
        """The request's video, resolved under the page's policy (`media_inputs.resolve_media`) and its decoding
        bounded (`check_decode_bounds`), before any frame is decoded; an upload wins over the text box. Raises
        `DemoInputError` (or `InputRefused`) with a message that names the user's input only."""
        location = (location or "").strip()
        upload = None
        if uploaded:
            name = Path(uploaded).name
            upload = Path(uploaded) if self.folders.holds(uploaded) else None
            try:
                source = resolve_media(uploaded, self.policy, upload=True, display_name=name,
                                       work_dir=self.folders.downloads)
            except FileNotFoundError:
                raise DemoInputError(f"The upload {name!r} is no longer on the server (uploads are deleted when a "
                                     "newer video replaces them, or after an hour): upload it again.") from None
            except BaseException:
                self._discard_upload(upload)
                raise
        elif not location:
            raise DemoInputError("No video: upload one, or type an http(s) URL into the box below it.")
        elif location == EXAMPLE_NAME and self.example_video is not None:
            # The page's own clip, under the page's caps; the user never sees (or gives) its server path.
            source = resolve_media(self.example_video, dataclasses.replace(self.policy, allow_local_paths=True),
                                   display_name=EXAMPLE_NAME)
        elif _is_url(location) and (cached := self._cached_url(location, options)) is not None:
            return cached  # a follow-up on the same URL: its frames are decoded already, nothing is fetched
        else:
            try:
                source = resolve_media(location, self.policy, display_name=location, work_dir=self.folders.downloads)
            except FileNotFoundError:
                raise DemoInputError(f"No such file or folder: {location}") from None
        try:
            return self._bounded(source, options, upload)
        except BaseException:
            source.close()
            self._discard_upload(upload)
            raise

    def _cached_url(self, url: str, options: AskOptions) -> VideoRequest | None:
        key = ("url", url, options.fps, options.max_frames)
        decoded = self._decoded
        if decoded is None or decoded.key != key:
            return None
        return VideoRequest(key=key, label=decoded.label, kind="video", fps=options.fps, max_frames=options.max_frames,
                            sampled=decoded.num_frames, duration=decoded.duration_s)

    def _bounded(self, source: MediaSource, options: AskOptions, upload: Path | None) -> VideoRequest:
        """The frames decoding will produce, refused over the policy's caps before anything is decoded."""
        from .processing.video_decoding import open_frame_source

        # A folder of frames has no frame rate: every frame is used (the frame cap still applies).
        fps = None if source.kind == "frames" else options.fps
        limit = self.policy.max_seconds
        if limit is not None and source.duration is not None and source.duration > limit:
            raise DemoInputError(
                f"This video is {_format_duration(source.duration)} long; this page accepts videos up to "
                f"{_format_duration(limit)}. Trim it, or run the demo on your own machine "
                "(`longvu demo --web --model ...`) for longer videos."
            )
        video_processor = self.processor.video_processor
        try:
            frames = open_frame_source(source, getattr(video_processor, "video_backend", None))
            sampled = len(video_processor.sample_frames(frames.metadata, fps=fps, max_frames=options.max_frames))
        except InputRefused:
            raise
        except (ValueError, OSError, RuntimeError, ImportError) as error:
            raise DemoInputError(
                f"Cannot read this video: {self._public(error, source)} Upload a video file (mp4, webm, mkv, mov, "
                "avi, gif)."
            ) from None
        if sampled == 0:
            raise DemoInputError("No frame would be sampled from this video: raise fps.")
        check_decode_bounds(source, self.policy, fps=fps, num_frames=sampled)
        if _is_url(source.display_name):
            key: tuple = ("url", source.display_name, options.fps, options.max_frames)
        else:
            stat = source.path.stat()
            key = ("file", str(source.path.resolve()), stat.st_mtime_ns, stat.st_size, fps, options.max_frames)
        return VideoRequest(key=key, label=source.display_name, kind=source.kind, fps=fps,
                            max_frames=options.max_frames, sampled=sampled, duration=source.duration, source=source,
                            upload=upload)

    def _public(self, error: BaseException | str, source: MediaSource | None = None, typed: str = "") -> str:
        """The first line of `error` with server paths replaced by what the user called them (`typed`: what the
        user typed into the text box, which may be shown back)."""
        text = error if isinstance(error, str) else _first_line(error)
        known = {str(self.folders.run): "(the page's folder)"}
        keep = (typed.strip(),) if typed and typed.strip() else ()
        if source is not None:
            known[str(source.path)] = source.display_name
            with contextlib.suppress(OSError):
                known[str(source.path.resolve())] = source.display_name
        return public_message(text, known, keep)

    def _discard_upload(self, upload: Path | None) -> None:
        """Delete an upload of the page's that is not in use (a refused one, or one replaced by newer videos)."""
        with self._uploads_lock:
            if upload is None or upload in self._kept_uploads or not self.folders.holds(upload):
                return
            upload.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                upload.parent.rmdir()  # Gradio keeps each upload in a folder of its own

    def _keep_upload(self, upload: Path | None) -> None:
        """The upload of an answered request stays for follow-up questions; the oldest beyond `KEPT_UPLOADS` go."""
        if upload is None:
            return
        with self._uploads_lock:
            self._kept_uploads[upload] = None
            self._kept_uploads.move_to_end(upload)
            dropped = []
            while len(self._kept_uploads) > KEPT_UPLOADS:
                dropped.append(self._kept_uploads.popitem(last=False)[0])
        for oldest in dropped:
            self._discard_upload(oldest)

    def decode(
        self, request: VideoRequest, options: AskOptions,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> tuple[DecodedVideo, bool]:
        """The request's video streamed into the towers (`VideoSession.open` under the page's policy: decoding and
        encoding overlap, the host holds a few chunks), and whether it came from the cache (same video and options).
        `progress(stage, count, total)` hears of every chunk; it may raise to stop the work."""
        if self._decoded is not None and self._decoded.key == request.key:
            return self._decoded, True
        if request.source is None:  # the cached encoding of this URL went since the request was planned
            raise DemoInputError("The frames of this video are no longer in memory: ask again.")
        self._decoded = None  # let the previous video's encoding go before the next one
        started = time.perf_counter()
        try:
            session = VideoSession.open(
                self.model, self.processor, request.source, policy=self.policy, fps=request.fps,
                max_frames=request.max_frames, progress=progress, keep_thumbnails=True,
            )
        except VideoReadError as error:
            raise DemoInputError(f"Cannot read this video: {self._public(error, request.source)}") from None
        self._decoded = DecodedVideo(
            key=request.key, label=request.label, session=session, duration_s=request.source.duration,
            decode_seconds=time.perf_counter() - started,
        )
        return self._decoded, False

    # -- the prompt --------------------------------------------------------------------------------------------------

    def text_inputs(self, conversation: Conversation, question: str) -> dict:
        """`input_ids`/`attention_mask` of the chat so far plus the new question, with the video (one placeholder) in
        the first user turn; tokenized as the processor's `apply_chat_template` does (`VideoSession.prompt`)."""
        return VideoSession(self.model, self.processor, None).prompt(question, conversation.turns)

    def token_budget(self, text_inputs: dict, options: AskOptions) -> TokenBudget:
        """The call's token budget (`session.plan_budget`: the same rule as every front end); refuses a prompt that
        leaves no room for the video."""
        try:
            return VideoSession(self.model, self.processor, None).budget(
                text_inputs, {"max_visual_tokens": options.max_visual_tokens})
        except BudgetError as error:
            if not error.no_room:
                raise DemoInputError(error.describe(lambda name: name.replace("max_visual_tokens", "token budget")))
            raise DemoInputError(
                f"The conversation is now {error.prompt_tokens} tokens, which leaves no room for the video in the "
                f"model's context of {error.value} tokens: press \"Clear conversation\" and ask again."
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
        piece, then the report. Bad input yields one update with `error=True` (nothing raised). The whole request
        (download, decoding, towers, answer) ends by `max_request_seconds`."""
        started = time.monotonic()
        deadline = started + self.max_request_seconds if self.max_request_seconds else None
        question = (question or "").strip()
        try:
            if not question:
                raise DemoInputError("Type a question first.")
            if uploaded and self.uploads_only_from is not None and not _inside(uploaded, self.uploads_only_from):
                raise DemoInputError("Uploads come through the page's upload button only.")
            request = self.resolve_video(uploaded, location, options)
        except ValueError as error:  # DemoInputError, InputRefused, and unreadable files from `media_inputs`
            typed = "" if uploaded else (location or "")
            yield PageUpdate(status=f"{ERROR_MARK} {self._public(error, typed=typed)}", conversation=conversation,
                             error=True, done=True)
            return

        events: queue.Queue = queue.Queue()
        worker = threading.Thread(
            target=self._answer_in_background, args=(request, question, conversation, options, events, deadline),
            name="longvu-web-request", daemon=True,
        )
        worker.start()
        yield from self._follow(events, worker, started, deadline, request, question, conversation)

    def _answer_in_background(
        self, request: VideoRequest, question: str, conversation: Conversation, options: AskOptions,
        events: queue.Queue, deadline: float | None,
    ) -> None:
        """The worker thread: `_answer` under the model's lock; everything goes to `events`.

        The lock is taken here, not in the page loop: a request whose page was closed still finishes (by its
        deadline) before the next one starts. The download is deleted when the request ends; the upload stays while
        it is in use."""
        final = ("error", "The page is still finishing an earlier request; try again in a minute.")
        try:
            wait = max(deadline - time.monotonic(), 1.0) if deadline is not None else None
            if self._lock.acquire(timeout=wait if wait is not None else -1):
                try:
                    final = self._answer(request, question, conversation, options, events, deadline)
                finally:
                    self._lock.release()
        finally:
            # Before the last event: when the page shows the result, the download is gone already.
            if request.source is not None:
                request.source.close()  # deletes a download (nothing for the user's own files)
            if final[0] == "done":
                self._keep_upload(request.upload)
            else:
                self._discard_upload(request.upload)
            events.put(final)

    def _answer(
        self, request: VideoRequest, question: str, conversation: Conversation, options: AskOptions,
        events: queue.Queue, deadline: float | None,
    ) -> tuple[str, Any]:
        """Decode and encode (or reuse), compress + generate, report; progress goes to `events`, the last event
        (`("done", ...)` or `("error", message)`) is returned."""
        from .report import build_report, render_png, thumbnail_picks

        def check_time(*_: Any) -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise _RequestTooLong(
                    f"This request took longer than this page's limit of {_format_duration(self.max_request_seconds)} "
                    "and was stopped: try a shorter video or a lower fps."
                )

        def on_progress(stage: str, count: int, total: int | None) -> None:
            check_time()  # each chunk first checks the request's deadline (raising stops the work)
            events.put(_Progress(stage, count))

        try:
            decoded, reused = self.decode(request, options, on_progress)
            check_time()
            same_video = conversation.video_key == decoded.key
            history = conversation if same_video else Conversation()
            text = self.text_inputs(history, question)
            budget = self.token_budget(text, options)
            events.put(("encoding", (decoded, reused, same_video, history, budget.to_dict())))
            streamer = _PageStreamer(self.processor.tokenizer, events)
            limits = {}
            if deadline is not None:  # transformers' MaxTimeCriteria: the answer stops at the deadline
                check_time()
                limits["max_time"] = max(deadline - time.monotonic(), 0.001)
            result = decoded.session.generate(
                text, streamer=streamer, compression_settings=budget.settings, max_new_tokens=options.max_new_tokens,
                do_sample=False, **limits,
            )
            cut = deadline is not None and time.monotonic() > deadline
            events.put(("answered", None))
            answer = "".join(streamer.pieces).strip()
            report = build_report(
                result.compression, video=decoded.label, question=question, model_name=self.model_name,
                fps=request.fps, frame_times=decoded.frame_times, answer=answer, random_weights=self.random_weights,
                budget=result.budget.to_dict(),
            )
            picture = render_png(report, decoded.session.info.thumbnail_images(thumbnail_picks(report)))
            return "done", (decoded, history, answer, report, picture, cut)
        except _RequestTooLong as error:
            self._decoded = None  # a decoding cut short leaves nothing to reuse
            return "error", str(error)
        except (DemoInputError, InputRefused) as error:
            return "error", self._public(error, request.source)
        except Exception as error:  # anything else: shown in the page too, and the server stays up
            return "error", f"{type(error).__name__}: {self._public(error, request.source)}"

    def _follow(
        self, events: queue.Queue, worker: threading.Thread, started: float, deadline: float | None,
        request: VideoRequest, question: str, conversation: Conversation,
    ) -> Iterator[PageUpdate]:
        """Turn the worker's events into page updates until it is done (or failed, or past the deadline)."""
        counts: dict[str, int] = {}
        answer, first_token_s, note, last_sent = "", None, "", 0.0
        length = f" ({_format_duration(request.duration)})" if request.duration else ""
        slow = " On CPU, long videos take a while: progress is shown here." if self.on_cpu else ""
        sampled = request.sampled
        while True:
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                if not worker.is_alive() and events.empty():
                    yield PageUpdate(status=f"{ERROR_MARK} the request stopped without an answer; try again.",
                                     conversation=conversation, error=True, done=True)
                    return
                if deadline is not None and time.monotonic() > deadline + _STOP_GRACE_S:
                    # The worker stops at its next check; the page's slot is free for the next visitor now.
                    yield PageUpdate(status=f"{ERROR_MARK} This request took longer than this page's limit and was "
                                     "stopped.", answer=answer, conversation=conversation, error=True, done=True)
                    return
                continue
            now = time.monotonic()
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
                note = _reencoding_note(decoded, reused, same_video, history, budget, request.kind)
                yield PageUpdate(status=f"Encoding and compressing {decoded.num_frames} frames{length}...{slow} "
                                 f"{note}", answer=answer, conversation=conversation)
            elif kind == "error":
                yield PageUpdate(status=f"{ERROR_MARK} {payload}", answer=answer, conversation=conversation,
                                 error=True, done=True)
                return
            elif kind == "done":
                decoded, history, final_answer, report, picture, cut = payload
                updated = Conversation(video_key=decoded.key, turns=[*history.turns, (question, final_answer)])
                total = now - started
                timing = (f"first token after {first_token_s:.1f} s, " if first_token_s is not None else "")
                stopped = " The answer was cut at this page's time limit." if cut else ""
                yield PageUpdate(
                    status=f"Done: {timing}{total:.1f} s in all.{stopped} {note}", answer=final_answer,
                    conversation=updated, report_image=picture, report_summary=_summary_markdown(report, decoded),
                    report=report, done=True, seconds_to_first_token=first_token_s,
                )
                return


def _inside(path: str | os.PathLike, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def _reencoding_note(decoded: DecodedVideo, reused: bool, same_video: bool, history: Conversation,
                     budget: dict, kind: str = "video") -> str:
    """What this question re-uses and what runs again, for the status line."""
    frames = f"{decoded.num_frames} frames"
    if reused:
        decoding = f"decoded {frames} reused (same video and options)"
    else:
        decoding = f"{frames} decoded and encoded in {decoded.decode_seconds:.1f} s"
    if kind == "frames":
        decoding += " (a folder of frames: every frame, fps does not apply)"
    if same_video and history.turns:
        return (f"Question {len(history.turns) + 1} on {decoded.label}: {decoding}; the towers' output (DINOv2, SigLIP, "
                f"aggregator) reused too; the compression ran again, because the question picks the full-resolution "
                f"frames and the {len(history.turns)} earlier turn(s) in the prompt ({budget['prompt_tokens']} tokens) "
                "shrink the video's budget.")
    return f"New conversation about {decoded.label}: {decoding}."


def _summary_markdown(report: dict, decoded: DecodedVideo) -> str:
    from .report import as_compression_report, summary_lines

    comp = as_compression_report(report["compression"])
    lines = [f"- {line}" for line in summary_lines(report)]
    lines.append(f"- prompt: {report['budget'].get('prompt_tokens')} tokens; compression path: `{comp.path}`")
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
    allow_local_paths: bool = False,
    policy: InputPolicy | None = None,
    max_request_seconds: float | None = DEFAULT_REQUEST_SECONDS,
    quiet: bool = True,
) -> VideoQuestionAnswerer:
    """A `VideoQuestionAnswerer` for a converted folder or Hub id, or (`model=None`) for the CLI's tiny random demo
    model with its generated example clip (offline). Model errors raise `loading.ModelLoadError` (one line). A model with
    random weights (the tiny model, also when saved and loaded from a folder) is detected from its config."""
    from .loading import load_demo_model, load_model
    from .tiny import write_demo_clip

    if model is None:
        network, processor = load_demo_model(device)
        name = "tiny-random-longvu"
    else:
        # bfloat16 on GPUs (float16 overflows on long videos); on the CPU the checkpoint's own dtype.
        network, processor = load_model(model, device=device, dtype="auto", quiet=quiet)
        name = model
    random_weights = has_random_weights(network) or model is None
    answerer = VideoQuestionAnswerer(
        network, processor, f"{name} (random weights)" if random_weights else name, random_weights=random_weights,
        policy=policy, max_video_seconds=max_video_seconds, allow_local_paths=allow_local_paths,
        max_request_seconds=max_request_seconds,
    )
    with contextlib.suppress(ImportError):  # the example clip is written with PyAV (the [video] extra)
        answerer.example_video = write_demo_clip(answerer.folders.example / EXAMPLE_NAME)
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


def _size_text(num_bytes: int) -> str:
    return f"{num_bytes / 1024**3:g} GB" if num_bytes >= 1024**3 else f"{num_bytes / 1024**2:g} MB"


def _banner(answerer: VideoQuestionAnswerer) -> str:
    lines = [f"# LongVU: ask a video\nModel: `{answerer.model_name}` on {answerer.model.device.type.upper()}."]
    if answerer.random_weights:
        lines.append("**This model has RANDOM WEIGHTS (the tiny test model): its answers are noise.** It shows the "
                     "mechanics: decoding, frame selection, resolution mixing, token compression.")
    if answerer.on_cpu:
        lines.append("Running on CPU: every sampled frame goes through DINOv2, so long videos are slow (minutes "
                     "before the first word for a long video with a full-size model). Progress is shown under the "
                     "question.")
    policy, accepted = answerer.policy, []
    accepted.append("uploads" + (f" up to {_size_text(policy.max_bytes)}" if policy.max_bytes else ""))
    accepted.append("public http(s) URLs" if policy.allow_network else "")
    accepted.append("paths on this machine" if policy.allow_local_paths else "")
    limits = []
    if policy.max_seconds is not None:
        limits.append(f"up to {_format_duration(policy.max_seconds)} long")
    if policy.max_fps is not None:
        limits.append(f"at most {policy.max_fps:g} fps")
    if policy.max_frames is not None:
        limits.append(f"at most {policy.max_frames:,} frames")
    text = "This page reads " + ", ".join(item for item in accepted if item)
    lines.append(text + (f"; videos {', '.join(limits)}." if limits else "."))
    return "\n\n".join(lines)


def build_app(answerer: VideoQuestionAnswerer):
    """The Gradio page (a `gradio.Blocks`) around `answerer`; `launch` serves it.

    Gradio keeps uploads and its cache in the answerer's private folder (`GRADIO_TEMP_DIR` is set to it for this
    process, so serve one page per process), swept every 10 minutes (files older than an hour) and deleted with the
    answerer; the page accepts uploads from that folder only."""
    gr = _import_gradio()
    os.environ["GRADIO_TEMP_DIR"] = str(answerer.folders.gradio)
    answerer.uploads_only_from = answerer.folders.gradio
    limits = answerer.option_limits()

    def on_ask(uploaded, location, question, conversation, fps, max_frames, max_visual_tokens, max_new_tokens):
        conversation = conversation or Conversation()
        try:
            options = AskOptions.from_page(fps, max_frames, max_visual_tokens, max_new_tokens, **limits)
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

    policy = answerer.policy
    with gr.Blocks(title="LongVU: ask a video", delete_cache=CACHE_SWEEP) as page:
        gr.Markdown(_banner(answerer), elem_id="banner")
        conversation_state = gr.State(Conversation())
        with gr.Row():
            with gr.Column(scale=1):
                # gr.File, not gr.Video: every file reaches our checks (gr.Video would transcode or refuse some
                # files with its own messages), so a broken or audio-only upload gets the page's explanation.
                uploaded = gr.File(label="Video (an upload is used instead of the box below)", type="filepath",
                                   elem_id="video-upload")
                location = gr.Textbox(
                    label=("...or an http(s) URL, a path on this machine (file or folder of frames)"
                           if policy.allow_local_paths else "...or a public http(s) URL")
                    + (f", or {EXAMPLE_NAME} (the example clip)" if answerer.example_video else ""),
                    value=EXAMPLE_NAME if answerer.example_video else "",
                    elem_id="video-location",
                )
                with gr.Accordion("Options", open=True):
                    with gr.Row():
                        fps = gr.Number(label="fps (frames sampled per second)"
                                        + (f", at most {policy.max_fps:g}" if policy.max_fps else ""),
                                        value=DEFAULT_FPS, minimum=0, maximum=policy.max_fps, elem_id="option-fps")
                        max_frames = gr.Number(label="frame cap (0: none)", value=0, precision=0, minimum=0,
                                               maximum=policy.max_frames, elem_id="option-max-frames")
                    with gr.Row():
                        max_visual_tokens = gr.Number(label="token budget for the video (0: what the context leaves)",
                                                      value=0, precision=0, minimum=0,
                                                      maximum=limits["visual_tokens_limit"], elem_id="option-budget")
                        max_new_tokens = gr.Number(
                            label="answer length (tokens)", precision=0, minimum=1, maximum=MAX_NEW_TOKENS_LIMIT,
                            elem_id="option-new-tokens",
                            value=DEMO_MAX_NEW_TOKENS if answerer.random_weights else DEFAULT_MAX_NEW_TOKENS,
                        )
            with gr.Column(scale=1):
                chat = gr.Chatbot(label="Conversation (questions on the same video)", elem_id="chat", height=320)
                question = gr.Textbox(label="Question", value=DEFAULT_QUESTION, elem_id="question")
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                    clear_button = gr.Button("Clear conversation", elem_id="clear")
                status = gr.Markdown("Upload a video (or use the example), type a question, press Ask.",
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
    allow_local_paths: bool = False,
    allow_local_paths_on_network: bool = False,
    policy: InputPolicy | None = None,
    max_request_seconds: float | None = DEFAULT_REQUEST_SECONDS,
    max_queue_size: int = DEFAULT_QUEUE_SIZE,
    device: str = "auto",
    quiet: bool = False,
    block: bool = True,
):
    """Load the model (`None`: the tiny random demo model, offline) and serve the page; returns the `gradio.Blocks`
    (its `answerer` attribute holds the request logic).

    The page reads uploads and public http(s) URLs under `InputPolicy.public_page()` (or `policy`);
    `allow_local_paths=True` adds paths on this machine (files and folders of frames, the page's other caps kept),
    which is refused (`ValueError`) when other machines can reach the page (a non-loopback `host`, `share`) unless
    `allow_local_paths_on_network=True`. `max_video_seconds` refuses longer videos with a message in the page;
    `max_request_seconds` bounds one request (download, decoding, towers and answer); `max_queue_size` requests wait
    for the page's one worker, more are turned away. Uploads are capped at the policy's `max_bytes`. With
    `block=False` the server runs in a background thread (tests); `page.close()` stops it and
    `page.answerer.close()` deletes the page's folders (both happen at exit too).
    """
    exposure = reachable_from_other_machines(host, share)
    if (allow_local_paths or (policy is not None and policy.allow_local_paths)) and exposure \
            and not allow_local_paths_on_network:
        raise ValueError(
            f"allow_local_paths with {exposure}: anyone who reaches the page could read this machine's files; serve "
            "on 127.0.0.1, or pass allow_local_paths_on_network=True if that is really what you want"
        )
    _import_gradio()  # fail before loading a model
    answerer = load_answerer(model, device=device, max_video_seconds=max_video_seconds,
                             allow_local_paths=allow_local_paths, policy=policy,
                             max_request_seconds=max_request_seconds, quiet=quiet)
    page = build_app(answerer)
    page.answerer = answerer  # for tests and callers that want the loaded model
    page.queue(default_concurrency_limit=1, max_size=max_queue_size)
    # Nothing of the page's folders is served: the example clip is never shown (the text box names it), downloads
    # are blocked outright, and only Gradio's own uploads and cache (in `folders.gradio`) are reachable.
    page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=quiet,
                allowed_paths=[], blocked_paths=[str(answerer.folders.downloads), str(answerer.folders.example)],
                max_file_size=answerer.policy.max_bytes)
    return page


__all__ = ["AskOptions", "Conversation", "DemoInputError", "PageFolders", "VideoQuestionAnswerer", "build_app",
           "has_random_weights", "launch", "load_answerer", "public_message", "reachable_from_other_machines"]
