"""Every video input, resolved once behind one policy, before FFmpeg sees it.

A path, an http(s) URL, an upload or raw bytes becomes a `MediaSource`: a local, checked file (or folder of frames)
with its container, duration, frame rate and size, or one `InputRefused` line that names the user's input. The CLI,
the web page, the processor, the benchmark runner and the lmms-eval model all go through `resolve_media`; none of
them fetches or opens media on its own.

What the policy guarantees:
- URLs: http and https only. The host is resolved here and every address it resolves to must be a public internet
  address (no loopback, private, link-local, shared, multicast, reserved or unspecified address, in any spelling:
  decimal/octal/hex IPv4, IPv4-mapped/compatible/6to4/NAT64 IPv6). The connection goes to the address that was
  checked (no second lookup); redirects are followed here, at most `MAX_REDIRECTS`, each hop checked again. One
  deadline bounds the whole download and a byte cap its size; the body goes to a private temporary file that
  `MediaSource.close()` deletes.
- Local paths only when `policy.allow_local_paths`; an upload (`upload=True`) is the user's own file and allowed.
- Content: text, playlists (HLS), concat lists, images and anything else that is not a plain video container is
  refused as "not a video". FFmpeg opens the file with the `file` protocol only and an allow-list of container
  formats checked before any packet is read (`open_container`), so a file can never make it open another input.
- `check_decode_bounds` refuses, before decoding starts, work over the caps: frames, fps, seconds, pixels.

Example:

```python
>>> policy = InputPolicy.public_page()
>>> with resolve_media("https://example.com/clip.mp4", policy) as source:
...     frames = check_decode_bounds(source, policy, fps=1.0)
...     source.kind, source.container, source.duration, frames
('video', 'mov,mp4,m4a,3gp,3g2,mj2', 12.0, 12)
>>> resolve_media("http://127.0.0.1:8080/secret", policy)
Traceback (most recent call last):
InputRefused: Video URL 'http://127.0.0.1:8080/secret' refused: its host is not a public internet address ...
```
"""

from __future__ import annotations

import http.client
import ipaddress
import math
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MAX_REDIRECTS = 5
# Where a policy caps the fps, sources above this rate are refused: no camera video needs more, and a rate made up
# in a header would otherwise let a short "duration" hide a huge number of frames.
MAX_SOURCE_FPS = 240.0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# FFmpeg demuxers of plain, self-contained video containers. Whatever is not here (hls, concat, image2, dash, sdp,
# rtp, tee, subfile, data, tty, cdg, ...) is refused: several of them open further inputs named inside the file.
ALLOWED_CONTAINERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2",  # one demuxer: "mov,mp4,m4a,3gp,3g2,mj2"
    "matroska", "webm",  # one demuxer: "matroska,webm"
    "avi", "mpegts", "mpeg", "flv", "ogg", "asf", "gif",
)
# Options for every container FFmpeg opens here: the local file and nothing else.
CONTAINER_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(ALLOWED_CONTAINERS)}
_VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".mpeg", ".flv", ".ogv",
                     ".ogg", ".wmv", ".asf", ".gif", ".3gp")
_NOT_VIDEO_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "application/javascript",
                    "application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl", "audio/x-mpegurl",
                    "application/dash+xml", "image/", "application/pdf")
_SIGNATURES = ((b"#EXTM3U", "an HLS playlist"), (b"ffconcat", "an FFmpeg concat list"), (b"\x89PNG", "a PNG image"),
               (b"\xff\xd8\xff", "a JPEG image"), (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive"),
               (b"\x1f\x8b", "a gzip archive"))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
# Tests admit their own loopback server here, as (address, port) pairs; nothing else ever does.
_ADMITTED_FOR_TESTS: frozenset[tuple[str, int]] = frozenset()


class InputRefused(ValueError):
    """The input was refused by the policy or is not usable media. `str()` is one line that names the user's input
    (the URL or the file name as the user gave it), never a server path.

    Example:

    ```python
    >>> try:
    ...     resolve_media("file:///etc/passwd", InputPolicy.public_page())
    ... except InputRefused as error:
    ...     print(error)
    Video 'file:///etc/passwd' refused: only http:// and https:// URLs are fetched (got 'file:')
    ```
    """


@dataclass(frozen=True)
class InputPolicy:
    """What `resolve_media` accepts and what `check_decode_bounds` lets decode. `None` means no cap.

    Example:

    ```python
    >>> InputPolicy.public_page().allow_local_paths, InputPolicy.public_page(max_fps=2).max_fps
    (False, 2)
    >>> InputPolicy.local_user().max_frames is None
    True
    ```
    """

    allow_local_paths: bool = True  # server/local files and folders of frames
    allow_network: bool = True  # http(s) URLs (public addresses only, always)
    max_bytes: int | None = 2 * 1024**3  # what this module receives: a download, raw bytes, an upload
    download_timeout: float = 300.0  # deadline for a WHOLE download (all redirects included), seconds
    max_seconds: float | None = None  # video duration
    max_frames: int | None = None  # frames to decode (duration x fps, or the frame count)
    max_fps: float | None = None  # sampling rate asked for
    max_pixels: int | None = None  # width x height of one frame
    max_local_bytes: int | None = None  # a local file (or one image of a frame folder); None: no cap

    @classmethod
    def public_page(cls, **overrides: Any) -> InputPolicy:
        """For a page anyone can reach: no server paths, 200 MB, a 60 s download, one hour of video at most 4 fps,
        3,600 frames, 4K frames."""
        settings = dict(allow_local_paths=False, allow_network=True, max_bytes=200 * 1024**2, download_timeout=60.0,
                        max_seconds=3600.0, max_frames=3600, max_fps=4.0, max_pixels=3840 * 2160,
                        max_local_bytes=200 * 1024**2)
        return cls(**{**settings, **overrides})

    @classmethod
    def local_user(cls, **overrides: Any) -> InputPolicy:
        """For the CLI and Python callers: the user's own files, any size; URLs to public addresses, 2 GB, 300 s."""
        return replace(cls(), **overrides)


@dataclass
class MediaSource:
    """A local, checked video file or folder of frames, ready for the decoders. Close it (or use `with`) when done:
    files this module created (downloads, bytes) are deleted then, and at the latest when it is garbage-collected
    or the interpreter exits.

    Example:

    ```python
    >>> with resolve_media("clip.mp4", InputPolicy.local_user()) as source:
    ...     source.kind, source.num_frames, (source.width, source.height)
    ('video', 90, (128, 72))
    ```
    """

    path: Path
    display_name: str
    kind: str  # "video" or "frames"
    temporary: bool
    container: str | None = None
    duration: float | None = None
    average_fps: float | None = None
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None
    _temp_dir: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Deleted at the latest when this object goes away or the interpreter exits.
        self._finalizer = (
            weakref.finalize(self, shutil.rmtree, self._temp_dir, True) if self._temp_dir is not None else None
        )

    def close(self) -> None:
        """Deletes the temporary file this module created (nothing for the user's own files); idempotent."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> MediaSource:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------------
# Resolving
# ----------------------------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: "C:\..." stays a Windows path


def resolve_media(
    value: str | os.PathLike | bytes,
    policy: InputPolicy,
    *,
    display_name: str | None = None,
    upload: bool = False,
    work_dir: str | os.PathLike | None = None,
) -> MediaSource:
    """Turns a path, an http(s) URL, raw bytes or (with `upload=True`) a file the web server received from the user
    into a checked `MediaSource` (see the module docstring for what is checked).

    Raises `InputRefused` (a `ValueError`) with one line naming the input, or `FileNotFoundError` for a local path
    that does not exist. Temporary files go to a private folder made with `tempfile.mkdtemp` (under `work_dir` if
    given: never a folder a web server serves).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        name = display_name or "(uploaded bytes)"
        data = bytes(value)
        if policy.max_bytes is not None and len(data) > policy.max_bytes:
            raise InputRefused(
                f"Video {_quote(name)} refused: {_size(len(data))}, over the {_size(policy.max_bytes)} limit"
            )
        temp_dir, path = _private_file(work_dir, "")
        try:
            path.write_bytes(data)
            return _checked_video(path, name, policy, temporary=True, temp_dir=temp_dir)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"A video input must be a path, an http(s) URL or bytes, got {type(value).__name__}")
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise InputRefused("No video was given (an empty path or URL)")
    scheme = _SCHEME.match(text) if isinstance(value, str) else None
    if scheme is not None and scheme.group(1).lower() not in ("http", "https"):
        if policy.allow_local_paths and os.path.exists(text):
            scheme = None  # a local file whose name has a colon, e.g. "clip:1.mp4"
    if upload:
        name = display_name or os.path.basename(text.rstrip("/\\")) or "(upload)"
        return _resolve_local(Path(text), name, policy, upload=True)
    if scheme is not None:
        name = display_name or _display_url(text)
        if scheme.group(1).lower() not in ("http", "https"):
            raise InputRefused(
                f"Video {_quote(name)} refused: only http:// and https:// URLs are fetched (got '{scheme.group(1)}:')"
            )
        if not policy.allow_network:
            raise InputRefused(f"Video URL {_quote(name)} refused: fetching URLs is turned off here")
        temp_dir, path = _private_file(work_dir, _url_suffix(text))
        try:
            _download(text, path, policy, name)
            return _checked_video(path, name, policy, temporary=True, temp_dir=temp_dir)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
    name = display_name or text
    if not policy.allow_local_paths:
        # Decided before looking at the file system: the answer says nothing about what exists on the server.
        raise InputRefused(f"Video {_quote(name)} refused: paths on the server are turned off here (upload the file)")
    return _resolve_local(Path(text).expanduser(), name, policy, upload=False)


def _resolve_local(path: Path, name: str, policy: InputPolicy, upload: bool) -> MediaSource:
    cap = policy.max_bytes if upload else policy.max_local_bytes
    if path.is_dir() and not upload:
        return _frame_folder(path, name, cap)
    if not path.exists():
        raise FileNotFoundError(f"Video file not found: {_quote(name)}")
    if not path.is_file():
        raise InputRefused(f"Could not open video {_quote(name)}: not a video (not a regular file)")
    size = path.stat().st_size
    if cap is not None and size > cap:
        raise InputRefused(f"Video {_quote(name)} refused: {_size(size)}, over the {_size(cap)} limit")
    return _checked_video(path, name, policy, temporary=False, temp_dir=None)


def _frame_folder(path: Path, name: str, cap: int | None) -> MediaSource:
    from PIL import Image

    files = [entry for entry in path.iterdir()
             if entry.name.lower().endswith(IMAGE_EXTENSIONS) and not entry.name.startswith(".")]
    if not files:
        raise InputRefused(f"Frame folder {_quote(name)} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    for entry in files:
        size = entry.stat().st_size
        if cap is not None and size > cap:
            raise InputRefused(f"Frame folder {_quote(name)} refused: an image of {_size(size)}, over the "
                               f"{_size(cap)} limit")
    first = min(files, key=lambda entry: _natural_key(entry.name))
    try:
        with Image.open(first) as image:  # reads the header only
            width, height = image.size
    except Exception as error:  # PIL raises many types for bad files
        raise InputRefused(f"Frame folder {_quote(name)}: its first image {first.name!r} cannot be read "
                           f"({type(error).__name__})") from None
    return MediaSource(path=path, display_name=name, kind="frames", temporary=False, num_frames=len(files),
                       width=width, height=height)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _checked_video(
    path: Path, name: str, policy: InputPolicy, temporary: bool, temp_dir: str | None
) -> MediaSource:
    """Sniffs the first bytes, then opens the container with the allow-lists and reads its header; under a policy
    that bounds frames or seconds, the frames are counted (a header can lie about the length)."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    reason = sniff_not_video(head)
    if reason is not None:
        raise InputRefused(f"Could not open video {_quote(name)}: not a video ({reason})")
    bounded = policy.max_frames is not None or policy.max_seconds is not None
    info = probe_video(path, name, count_frames=bounded, max_seconds=policy.max_seconds)
    return MediaSource(path=path, display_name=name, kind="video", temporary=temporary, _temp_dir=temp_dir, **info)


def sniff_not_video(head: bytes) -> str | None:
    """Why the first bytes of a file cannot be a video container (None when they may be one)."""
    if not head:
        return "the file is empty"
    for signature, what in _SIGNATURES:
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(signature):
            return f"it is {what}"
    if b"\x00" not in head:
        printable = sum(byte >= 0x20 or byte in b"\t\n\r\f\b\x1b" for byte in head)
        if printable >= 0.95 * len(head):
            return "it holds text"
    return None


def load_image(location: str | os.PathLike, policy: InputPolicy, label: str | None = None):
    """One image (a frame of a video given as a list of images) as an RGB PIL image, from a local path or an http(s)
    URL under `policy` (URLs are fetched like videos, then deleted). `label` names it in errors."""
    from PIL import Image

    label = label or _quote(os.fspath(location) if not isinstance(location, bytes) else "(bytes)")
    text = os.fspath(location)
    scheme = _SCHEME.match(text) if isinstance(text, str) else None
    temp_dir = None
    try:
        if scheme is not None and not (policy.allow_local_paths and os.path.exists(text)):
            if scheme.group(1).lower() not in ("http", "https"):
                raise InputRefused(f"Image {label} refused: only http:// and https:// URLs are fetched")
            if not policy.allow_network:
                raise InputRefused(f"Image URL {label} refused: fetching URLs is turned off here")
            temp_dir, path = _private_file(None, "")
            _download(text, path, policy, _display_url(text))
        else:
            if not policy.allow_local_paths:
                raise InputRefused(f"Image {label} refused: paths on the server are turned off here")
            path = Path(text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"Frame image not found: {label}")
            if policy.max_local_bytes is not None and path.stat().st_size > policy.max_local_bytes:
                raise InputRefused(f"Image {label} refused: over the {_size(policy.max_local_bytes)} limit")
        try:
            with Image.open(path) as image:
                if policy.max_pixels is not None and image.width * image.height > policy.max_pixels:
                    raise InputRefused(f"Image {label} refused: {image.width}x{image.height} pixels are over the "
                                       f"limit of {policy.max_pixels:,}")
                return image.convert("RGB")
        except InputRefused:
            raise
        except Exception as error:  # PIL raises many types for bad files
            raise ValueError(f"Could not read image {label}: {type(error).__name__}") from None
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# FFmpeg: the local file, an allowed container, nothing else
# ----------------------------------------------------------------------------------------------------------------


def open_container(source: str | os.PathLike | Any, label: str):
    """Opens a file (path or file object) with PyAV for reading, restricted to the `file` protocol and the allowed
    container formats (checked by FFmpeg right after probing, before the demuxer reads anything, and again here).
    Raises `InputRefused` ("not a video") for any other format and `ValueError` for unreadable files; both name
    the video as `label` (e.g. `'clip.mp4'`, quotes included)."""
    import av

    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    try:
        container = av.open(source, mode="r", container_options=dict(CONTAINER_OPTIONS))
    except av.error.ArgumentError:  # EINVAL: FFmpeg's "Format not on whitelist"
        raise InputRefused(
            f"Could not open video {label}: not a video (not one of the accepted containers: mp4/mov, "
            "mkv/webm, avi, mpeg-ts/ps, flv, ogg, asf/wmv, gif)"
        ) from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        text = str(error).strip() or type(error).__name__
        if isinstance(source, str):
            text = text.replace(source, label.strip("'"))  # FFmpeg names the file: say it as the user did
        raise ValueError(
            f"Could not open video {label}: not a readable video file, or it is truncated or corrupt "
            f"({type(error).__name__}: {text})"
        ) from None
    format_names = set(container.format.name.split(","))
    if not format_names & set(ALLOWED_CONTAINERS):  # FFmpeg already refused these; checked twice on purpose
        container.close()
        raise InputRefused(f"Could not open video {label}: not a video (FFmpeg reads it as "
                           f"{container.format.name!r})")
    return container


def probe_video(
    path: str | os.PathLike, name: str, count_frames: bool = False, max_seconds: float | None = None
) -> dict:
    """Container format, duration, average fps, frame count and frame size, from the header (`open_container`).

    With `count_frames` (or when the header gives neither duration nor frame count) the video packets are counted
    (demuxing, no decoding) and the duration is `frames / fps`, as the decoders compute it; counting stops once the
    count passes `max_seconds` of video."""
    import av

    with open_container(path, _quote(name)) as container:
        if not container.streams.video:
            raise InputRefused(f"Could not open video {_quote(name)}: not a video (it has no video stream)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        frames = int(stream.frames or 0) or None
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        if not duration and frames and fps:
            duration = frames / fps
        if count_frames or (not duration and not frames):
            limit = math.inf if max_seconds is None or not fps else max_seconds * fps + 1
            frames = 0
            try:
                for packet in container.demux(stream):
                    frames += bool(packet.size)
                    if frames > limit:
                        break  # already too long: the exact count does not matter
            except av.error.FFmpegError:
                pass  # the decoder reports the damage with its own message
            frames = frames or None
            if frames and fps:
                duration = frames / fps
        codec = stream.codec_context
        width = int(codec.width or 0) or None if codec is not None else None
        height = int(codec.height or 0) or None if codec is not None else None
        return {"container": container.format.name, "duration": duration or None, "average_fps": fps,
                "num_frames": frames, "width": width, "height": height}


# ----------------------------------------------------------------------------------------------------------------
# Bounds
# ----------------------------------------------------------------------------------------------------------------


def check_decode_bounds(
    source: MediaSource, policy: InputPolicy, *, fps: float | None, num_frames: int | None = None
) -> int:
    """The number of frames that decoding `source` at `fps` (or `num_frames` of it) will produce, checked against
    the policy's caps before any frame is decoded: `InputRefused` when the frames, the fps, the duration or the
    pixels per frame are over them. With neither `fps` nor `num_frames`, every frame counts.

    Example:

    ```python
    >>> check_decode_bounds(source, InputPolicy.public_page(), fps=1000.0)
    Traceback (most recent call last):
    InputRefused: Video 'clip.mp4' refused: fps=1000 is over the limit of 4
    ```
    """
    name = _quote(source.display_name)
    if fps is not None:
        try:
            fps = float(fps)  # numpy and torch scalars too
        except (TypeError, ValueError):
            raise InputRefused(f"Video {name}: fps must be a positive number, got {fps!r}") from None
        if not (math.isfinite(fps) and fps > 0):
            raise InputRefused(f"Video {name}: fps must be a positive number, got {fps!r}")
        if policy.max_fps is not None and fps > policy.max_fps:
            raise InputRefused(f"Video {name} refused: fps={fps:g} is over the limit of {policy.max_fps:g}")
    if policy.max_fps is not None and source.average_fps and source.average_fps > MAX_SOURCE_FPS:
        raise InputRefused(f"Video {name} refused: its frame rate of {source.average_fps:g} fps is over the limit of "
                           f"{MAX_SOURCE_FPS:g}")
    if policy.max_pixels is not None and source.width and source.height:
        if source.width * source.height > policy.max_pixels:
            raise InputRefused(f"Video {name} refused: frames of {source.width}x{source.height} pixels are over "
                               f"the limit of {policy.max_pixels:,} pixels")
    if policy.max_seconds is not None and source.duration is not None and source.duration > policy.max_seconds:
        raise InputRefused(f"Video {name} refused: {source.duration:.0f} s long, over the limit of "
                           f"{policy.max_seconds:.0f} s")
    total = source.num_frames
    if total is None and source.duration and source.average_fps:
        total = math.ceil(source.duration * source.average_fps)
    if num_frames is not None:
        if int(num_frames) < 1:
            raise InputRefused(f"Video {name}: num_frames must be at least 1, got {num_frames!r}")
        count = int(num_frames)
    elif fps is not None and source.duration:
        count = math.ceil(source.duration * fps)
        count = min(count, total) if total else count  # a rate above the video's own repeats no frame
    else:
        count = total
    if count is None:
        if policy.max_frames is not None or policy.max_seconds is not None:
            raise InputRefused(f"Video {name} refused: its length cannot be read, so its decoding cannot be bounded")
        return 0
    if policy.max_frames is not None and count > policy.max_frames:
        raise InputRefused(f"Video {name} refused: {count:,} frames to decode, over the limit of "
                           f"{policy.max_frames:,} (lower the fps or use a shorter video)")
    return count


# ----------------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------------


def public_address_refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` is not a public internet address (None when it is one). IPv6 forms that carry an IPv4 address
    (mapped, compatible, 6to4, NAT64) are judged by that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and int(address) >> 32 == 0:  # ::a.b.c.d (IPv4-compatible), :: and ::1
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return public_address_refusal(embedded)
        if address.teredo is not None or address in _NAT64_LOCAL or address.is_site_local:
            return "a tunnelled or local IPv6 address"
    checks = (("loopback", address.is_loopback), ("unspecified", address.is_unspecified),
              ("link-local", address.is_link_local), ("multicast", address.is_multicast),
              ("private", address.is_private), ("reserved", address.is_reserved),
              ("shared (carrier-grade NAT)", isinstance(address, ipaddress.IPv4Address) and address in _SHARED),
              ("not globally reachable", not address.is_global))
    for label, hit in checks:
        if hit:
            return f"a {label} address"
    return None


def _numeric_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names by itself, in every spelling resolvers accept (2130706433, 0x7f.1, 0177.0.0.1,
    [::ffff:127.0.0.1], a trailing dot), or None for a name."""
    host = host.strip("[]")
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # the C library's legacy forms
    except (OSError, UnicodeError, ValueError):
        return None


def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (one system lookup; tests replace `socket.getaddrinfo`)."""
    results = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(result[4][0] for result in results))


def _public_addresses(host: str, port: int, name: str) -> list[str]:
    refused = InputRefused(f"Video URL {_quote(name)} refused: its host is not a public internet address (only "
                           "public http(s) addresses are fetched)")
    numeric = _numeric_host(host)
    if numeric is not None:
        addresses = [numeric]
    else:
        try:
            addresses = [ipaddress.ip_address(address.split("%", 1)[0]) for address in _resolve(host, port)]
        except (OSError, UnicodeError, ValueError):
            raise refused from None  # the same answer as for an internal host: no probing of internal names
    if not addresses:
        raise refused
    for address in addresses:  # every one: a name must not mix public and internal addresses
        if (str(address), port) in _ADMITTED_FOR_TESTS:
            continue
        if public_address_refusal(address) is not None:
            raise refused
    return [str(address) for address in addresses]


class _Deadline:
    """One deadline for a whole download: when it passes, the socket in use is shut down, which ends any read in
    progress (a per-read timeout alone lets a server drip one byte at a time forever)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            self.expired = True
        return max(left, 0.0)

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._socket = sock
            if self.expired and sock is not None:
                self._shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._socket is not None:
                self._shutdown(self._socket)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            # The plain socket's shutdown, also for a TLS socket (whose own shutdown drops its TLS state).
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection whose socket goes to an address checked beforehand; the Host header and TLS SNI
    carry the name from the URL."""

    def __init__(self, host: str, port: int, address: str, tls: bool, deadline: _Deadline):
        super().__init__(host, port, timeout=max(deadline.remaining(), 0.001))
        self.default_port = 443 if tls else 80  # the Host header omits the default port
        self._address, self._tls, self._deadline = address, tls, deadline

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), timeout=max(self._deadline.remaining(), 0.001))
        self._deadline.watch(sock)
        if self._tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host,
                                                            do_handshake_on_connect=False)
            self._deadline.watch(sock)  # the TLS socket now owns the connection: the deadline must reach it
            sock.do_handshake()
        self.sock = sock


def _download(url: str, target: Path, policy: InputPolicy, name: str) -> None:
    """GET `url` into `target`, following redirects here; every hop's host is checked, one deadline, a byte cap."""
    deadline = _Deadline(policy.download_timeout)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            location = _fetch_once(url, target, policy, name, deadline)
            if location is None:
                return
            url = urllib.parse.urljoin(url, location)
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                raise InputRefused(f"Video URL {_quote(name)} refused: it redirects to a '{scheme}:' URL "
                                   "(only http and https are fetched)")
        raise InputRefused(f"Video URL {_quote(name)} refused: more than {MAX_REDIRECTS} redirects")
    finally:
        deadline.cancel()


def _fetch_once(url: str, target: Path, policy: InputPolicy, name: str, deadline: _Deadline) -> str | None:
    """One request: writes the body to `target` and returns None, or returns a redirect's Location."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InputRefused(f"Video URL {_quote(name)} refused: not a valid URL") from None
    if not host:
        raise InputRefused(f"Video URL {_quote(name)} refused: it names no host")
    if parts.username is not None or parts.password is not None:
        raise InputRefused(f"Video URL {_quote(name)} refused: URLs with a user name or password are not fetched")
    tls = parts.scheme.lower() == "https"
    port = port or (443 if tls else 80)
    addresses = _public_addresses(host, port, name)
    request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    timed_out = InputRefused(f"Video URL {_quote(name)} refused: the download took longer than "
                             f"{deadline.seconds:g} s")
    last_error: BaseException | None = None
    for address in addresses:
        connection = _PinnedConnection(host, port, address, tls, deadline)
        response = None
        try:
            connection.request("GET", request_target, headers={
                "User-Agent": "longvu-hf", "Accept": "video/*, application/octet-stream;q=0.9, */*;q=0.1",
                "Accept-Encoding": "identity",
            })
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise InputRefused(f"Could not download video {_quote(name)}: a redirect without a Location")
                return location
            if response.status != 200:
                raise InputRefused(f"Could not download video {_quote(name)}: the server answered HTTP "
                                   f"{response.status} {response.reason}".rstrip())
            content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if content_type.startswith(_NOT_VIDEO_TYPES) and content_type != "image/gif":
                raise InputRefused(f"Could not open video {_quote(name)}: not a video (the server sent "
                                   f"{content_type})")
            _copy_body(response, target, policy, name, deadline)
            return None
        except InputRefused:
            raise
        except (OSError, http.client.HTTPException, ValueError) as error:
            if deadline.expired or deadline.remaining() <= 0:
                raise timed_out from None
            last_error = error
        finally:
            deadline.watch(None)  # before the socket closes: its number may be reused
            if response is not None:
                response.close()  # the response holds the socket open after http.client's own close
            connection.close()
    reason = type(last_error).__name__ + (f": {last_error}" if str(last_error) else "")
    raise InputRefused(f"Could not download video {_quote(name)}: {reason}")


def _copy_body(response: http.client.HTTPResponse, target: Path, policy: InputPolicy, name: str,
               deadline: _Deadline) -> None:
    cap = policy.max_bytes
    too_large = InputRefused(f"Video URL {_quote(name)} refused: the download is over the {_size(cap or 0)} limit")
    length = response.getheader("Content-Length")
    if cap is not None and length is not None and length.strip().isdigit() and int(length) > cap:
        raise too_large
    received = 0
    with open(target, "wb") as out:
        while True:
            if deadline.remaining() <= 0:
                raise OSError("deadline")
            chunk = response.read1(1 << 16)  # at most one read from the socket: the deadline is checked often
            if not chunk:
                break
            received += len(chunk)
            if cap is not None and received > cap:
                raise too_large
            out.write(chunk)
    if deadline.expired:
        raise OSError("deadline")


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def _private_file(work_dir: str | os.PathLike | None, suffix: str) -> tuple[str, Path]:
    """A new private folder (mode 0700) and an empty file in it (mode 0600)."""
    folder = tempfile.mkdtemp(prefix="longvu-input-", dir=work_dir)
    handle, path = tempfile.mkstemp(prefix="video-", suffix=suffix, dir=folder)
    os.close(handle)
    return folder, Path(path)


def _url_suffix(url: str) -> str:
    try:
        suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
    except ValueError:
        return ""
    return suffix if suffix in _VIDEO_EXTENSIONS else ""


def _display_url(url: str) -> str:
    """The URL to show: without a user name or password, and cut at 300 characters."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.username is not None or parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)[-1]
            url = urllib.parse.urlunsplit(parts._replace(netloc=f"***@{netloc}"))
    except ValueError:
        pass
    return url if len(url) <= 300 else url[:297] + "..."


def _quote(name: str) -> str:
    return "'" + name.replace("\n", " ").replace("\r", " ") + "'"


def _size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{num_bytes} bytes"


__all__ = [
    "ALLOWED_CONTAINERS",
    "CONTAINER_OPTIONS",
    "IMAGE_EXTENSIONS",
    "InputPolicy",
    "InputRefused",
    "MediaSource",
    "check_decode_bounds",
    "open_container",
    "probe_video",
    "public_address_refusal",
    "resolve_media",
    "sniff_not_video",
]
