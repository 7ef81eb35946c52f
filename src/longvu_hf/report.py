"""The compression report of one video, as JSON, a PNG picture or a self-contained HTML page.

Every number comes from the model's own report (a `CompressionReport`: `out.compression[i]` from `forward` or
`generate(..., return_dict_in_generate=True)`, or `answer.compression` from `longvu_hf.session`); this module only lays
it out. The report's JSON holds the compression report as `CompressionReport.to_dict()`. The picture shows, over the
sampled frames: which frames DINOv2 selection kept or dropped, which kept frames the text query gave full resolution,
how many tokens each kept frame has after STC, thumbnails of kept frames, and the token budget.

Example:

```python
>>> from longvu_hf.report import build_report, save_report
>>> out = model.generate(**inputs, max_new_tokens=64, return_dict_in_generate=True)
>>> report = build_report(out.compression[0], video="clip.mp4", question="What happens?",
...                       model_name="my-longvu", fps=1.0)
>>> save_report(report, "report.png", json_path="report.json", frames=inputs["pixel_values_videos"],
...             video_size=(720, 1280))
```

PNG rendering uses Pillow only (a dependency of the package).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .modeling.compression_report import CompressionReport

REPORT_FORMATS = (".png", ".html")

# Colours of the picture.
DROPPED = (205, 205, 205)
LOW_RES = (74, 144, 217)
HIGH_RES = (245, 166, 35)
TEXT = (30, 30, 30)
MUTED = (110, 110, 110)
WARNING = (200, 30, 30)
BACKGROUND = (255, 255, 255)

WIDTH = 1280
MARGIN = 40
MAX_THUMBNAILS = 24


# --------------------------------------------------------------------------------------------------------------------
# The JSON payload
# --------------------------------------------------------------------------------------------------------------------


def as_compression_report(compression: CompressionReport | dict) -> CompressionReport:
    """The typed report (from its JSON dict if need be)."""
    return compression if isinstance(compression, CompressionReport) else CompressionReport.from_dict(compression)


def frame_table(compression: CompressionReport | dict, frame_times: Sequence[float] | None = None) -> list[dict]:
    """One row per sampled frame: kept by DINO selection, full resolution, tokens kept (0 when dropped).

    A re-layout of the model's report: `tokens_per_frame[j]` belongs to `kept_frame_indices[j]`.
    """
    compression = as_compression_report(compression)
    kept = list(compression.kept_frame_indices)
    tokens = list(compression.tokens_per_frame)
    if len(kept) != len(tokens):
        raise ValueError(
            f"Malformed compression report: {len(kept)} kept frames but {len(tokens)} entries in tokens_per_frame"
        )
    tokens_by_frame = dict(zip(kept, tokens))
    high = set(compression.high_res_frame_indices or [])
    rows = []
    for index in range(int(compression.num_input_frames)):
        row = {"index": index, "kept": index in tokens_by_frame, "high_res": index in high,
               "tokens": int(tokens_by_frame.get(index, 0))}
        if frame_times is not None:
            row["time_s"] = round(float(frame_times[index]), 3)
        rows.append(row)
    return rows


def build_report(
    compression: CompressionReport | dict,
    *,
    video: str,
    question: str,
    model_name: str,
    fps: float | None = None,
    frame_times: Sequence[float] | None = None,
    answer: str | None = None,
    random_weights: bool = False,
    budget: dict | None = None,
) -> dict:
    """The JSON payload of a report.

    Args:
        compression: the model's report for this video, stored under `"compression"` as its `to_dict()`.
        video, question, model_name: what was asked of which model.
        fps: sampling rate, used for frame times when `frame_times` is not given.
        frame_times: time in seconds of every sampled frame.
        answer: the generated answer, if any.
        random_weights: the model has random weights (demo): the picture says so.
        budget: the token settings of the call (`TokenBudget.to_dict()`: `max_context_length`, `context_margin`,
            `max_visual_tokens`, ...).
    """
    compression = as_compression_report(compression)
    num_frames = int(compression.num_input_frames)
    if frame_times is None and fps:
        frame_times = [i / float(fps) for i in range(num_frames)]
    if frame_times is not None and len(frame_times) != num_frames:
        raise ValueError(f"{len(frame_times)} frame times for {num_frames} sampled frames")
    return {
        "video": str(video),
        "question": question,
        "model": model_name,
        "random_weights": bool(random_weights),
        "sampling": {"fps": fps, "num_frames": num_frames},
        "budget": dict(budget or {}, visual_budget=compression.budget, visual_tokens=compression.num_visual_tokens),
        "compression": compression.to_dict(),
        "frames": frame_table(compression, frame_times),
        "answer": answer,
    }


# --------------------------------------------------------------------------------------------------------------------
# Thumbnails
# --------------------------------------------------------------------------------------------------------------------


def thumbnail_from_pixels(pixels: Any, video_size: tuple[int, int] | None, height: int) -> Image.Image:
    """A thumbnail from one processed frame, `(3, S, S)` uint8, with the square padding cropped away.

    `video_size` is the source (height, width); the processor pads the frame to a centred square before resizing.
    """
    array = pixels.detach().cpu().numpy() if hasattr(pixels, "detach") else np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError("thumbnails need the processor's uint8 frames")
    image = Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)))
    side = image.width
    if video_size is not None:
        src_h, src_w = video_size
        if src_w > src_h:
            content = max(1, round(side * src_h / src_w))
            top = (side - content) // 2
            image = image.crop((0, top, side, top + content))
        elif src_h > src_w:
            content = max(1, round(side * src_w / src_h))
            left = (side - content) // 2
            image = image.crop((left, 0, left + content, side))
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.BILINEAR)


def pick_thumbnail_frames(kept: Sequence[int], limit: int = MAX_THUMBNAILS) -> list[int]:
    """At most `limit` kept frames, evenly spread over the kept ones (all of them when few)."""
    kept = list(kept)
    if len(kept) <= limit:
        return kept
    positions = np.linspace(0, len(kept) - 1, limit).round().astype(int)
    return [kept[p] for p in sorted(set(positions.tolist()))]


# --------------------------------------------------------------------------------------------------------------------
# The picture
# --------------------------------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _format_time(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines or [""]


def summary_lines(report: dict) -> list[str]:
    """The report (from `build_report`) in a few sentences (also printed by the command)."""
    return compression_summary(report["compression"], report["sampling"].get("fps"), report.get("budget"))


def compression_summary(
    compression: CompressionReport | dict, fps: float | None = None, budget: dict | None = None
) -> list[str]:
    """A compression report (and the call's `budget`, `TokenBudget.to_dict()`) in a few sentences."""
    comp = as_compression_report(compression)
    n, kept = comp.num_input_frames, len(comp.kept_frame_indices)
    high = len(comp.high_res_frame_indices or [])
    path = {"none": "no token compression needed", "mix": "query-based high/low resolution mixing",
            "stc": "spatial token compression (STC)"}.get(comp.path, comp.path)
    lines = [
        f"{n} sampled frames" + (f" ({fps:g} fps)" if fps else "")
        + f"; DINOv2 selection kept {kept} and dropped {n - kept}"
        + ("" if comp.frame_selection_ran else " (the video fits: selection did not run)"),
        f"{high} kept frames at full resolution, {kept - high} at low resolution; path: {path}",
        f"{comp.num_visual_tokens} visual tokens for a budget of {comp.budget}"
        + (f" ({100.0 * comp.num_visual_tokens / comp.budget:.1f}% used)" if comp.budget > 0 else ""),
    ]
    budget = budget or {}
    settings = [f"{key}={budget[key]}" for key in ("max_context_length", "context_margin", "max_visual_tokens")
                if budget.get(key) is not None]
    if settings:
        lines.append("token settings: " + ", ".join(settings))
    return lines


def render_png(report: dict, thumbnails: dict[int, Image.Image] | None = None) -> Image.Image:
    """Draw the report: header, frame timeline, tokens per kept frame, budget bar, thumbnails, legend."""
    thumbnails = thumbnails or {}
    comp, rows = as_compression_report(report["compression"]), report["frames"]
    title_font, font, small = _font(22), _font(15), _font(12)
    scratch = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    plot_w = WIDTH - 2 * MARGIN

    header = [("LongVU compression report", title_font, TEXT)]
    if report.get("random_weights"):
        header.append(("RANDOM WEIGHTS: this shows the mechanics only; the answer is meaningless", font, WARNING))
    header.append((f"video: {report['video']}    model: {report['model']}", font, MUTED))
    for line in _wrap(scratch, f"question: {report['question']}", font, plot_w):
        header.append((line, font, TEXT))
    if report.get("answer") is not None:
        for line in _wrap(scratch, f"answer: {report['answer']}", font, plot_w)[:4]:
            header.append((line, font, TEXT))
    header.append(("", small, TEXT))
    header.extend((line, font, TEXT) for line in summary_lines(report))

    thumb_h, thumb_cols = 90, 6
    thumb_items = [(i, thumbnails[i]) for i in sorted(thumbnails)]
    thumb_rows = -(-len(thumb_items) // thumb_cols)
    cell_w = plot_w // thumb_cols
    header_h = sum(22 if f is font else (30 if f is title_font else 16) for _, f, _ in header) + 10
    timeline_h, tokens_h, budget_h = 34, 150, 26
    height = (MARGIN + header_h + 30 + timeline_h + 40 + tokens_h + 50 + budget_h + 50
              + (thumb_rows * (thumb_h + 36) + 30 if thumb_items else 0) + 40 + MARGIN)
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)

    y = MARGIN
    for text, f, colour in header:
        draw.text((MARGIN, y), text, fill=colour, font=f)
        y += 22 if f is font else (30 if f is title_font else 16)
    y += 10

    n = max(1, len(rows))

    def x_of(index: float) -> float:
        return MARGIN + plot_w * index / n

    # Timeline: dropped first, then kept frames on top, so that a kept frame stays visible when frames share pixels.
    draw.text((MARGIN, y), "sampled frames: kept / dropped by DINOv2, high / low resolution", fill=TEXT, font=font)
    y += 24
    draw.rectangle([MARGIN, y, MARGIN + plot_w, y + timeline_h], fill=DROPPED)
    for layer in ("low", "high"):
        for row in rows:
            if not row["kept"] or (row["high_res"] != (layer == "high")):
                continue
            x0, x1 = x_of(row["index"]), x_of(row["index"] + 1)
            draw.rectangle([x0, y, max(x0 + 1, x1 - (1 if x1 - x0 > 3 else 0)), y + timeline_h],
                           fill=HIGH_RES if row["high_res"] else LOW_RES)
    y += timeline_h + 4
    for tick in _ticks(rows):
        x = x_of(tick)
        draw.line([x, y, x, y + 5], fill=MUTED)
        label = _format_time(rows[tick]["time_s"]) if "time_s" in rows[tick] else f"#{tick}"
        draw.text((min(x, MARGIN + plot_w - 40), y + 7), label, fill=MUTED, font=small)
    y += 36

    # Tokens kept per frame after compression.
    max_tokens = max([r["tokens"] for r in rows] + [1])
    draw.text((MARGIN, y), f"tokens kept per frame (max {max_tokens})", fill=TEXT, font=font)
    y += 24
    base = y + tokens_h
    draw.line([MARGIN, base, MARGIN + plot_w, base], fill=MUTED)
    for row in rows:
        if not row["kept"] or row["tokens"] == 0:
            continue
        x0, x1 = x_of(row["index"]), x_of(row["index"] + 1)
        top = base - tokens_h * row["tokens"] / max_tokens
        draw.rectangle([x0, top, max(x0 + 1, x1 - (1 if x1 - x0 > 3 else 0)), base],
                       fill=HIGH_RES if row["high_res"] else LOW_RES)
    draw.text((MARGIN + plot_w + 4, base - tokens_h - 6), str(max_tokens), fill=MUTED, font=small)
    draw.text((MARGIN + plot_w + 4, base - 8), "0", fill=MUTED, font=small)
    y = base + 30

    # Budget bar: tokens used by full- and low-resolution frames against the budget.
    budget = max(1, int(comp.budget))
    used_high = sum(r["tokens"] for r in rows if r["high_res"])
    used_low = sum(r["tokens"] for r in rows if r["kept"] and not r["high_res"])
    draw.text((MARGIN, y), f"visual tokens: {comp.num_visual_tokens} of a budget of {comp.budget}",
              fill=TEXT, font=font)
    y += 24
    draw.rectangle([MARGIN, y, MARGIN + plot_w, y + budget_h], outline=MUTED, fill=(245, 245, 245))
    x = MARGIN
    for used, colour in ((used_high, HIGH_RES), (used_low, LOW_RES)):
        width = plot_w * min(used, budget) / budget
        if width > 0:
            draw.rectangle([x, y, x + width, y + budget_h], fill=colour)
            x += width
    y += budget_h + 26

    if thumb_items:
        draw.text((MARGIN, y), f"kept frames ({len(thumb_items)} of {len(comp.kept_frame_indices)} shown)",
                  fill=TEXT, font=font)
        y += 26
        for k, (index, thumb) in enumerate(thumb_items):
            cx, cy = MARGIN + (k % thumb_cols) * cell_w, y + (k // thumb_cols) * (thumb_h + 36)
            thumb = thumb.copy()
            thumb.thumbnail((cell_w - 12, thumb_h))
            row = rows[index]
            colour = HIGH_RES if row["high_res"] else LOW_RES
            draw.rectangle([cx, cy, cx + thumb.width + 5, cy + thumb.height + 5], fill=colour)
            image.paste(thumb, (cx + 3, cy + 3))
            when = _format_time(row["time_s"]) if "time_s" in row else ""
            draw.text((cx, cy + thumb.height + 8), f"#{index} {when}  {row['tokens']} tok", fill=TEXT, font=small)
        y += thumb_rows * (thumb_h + 36) + 10

    # Legend.
    x = MARGIN
    for label, colour in (("dropped", DROPPED), ("kept, low resolution", LOW_RES), ("kept, full resolution", HIGH_RES)):
        draw.rectangle([x, y + 2, x + 14, y + 16], fill=colour)
        draw.text((x + 20, y), label, fill=TEXT, font=font)
        x += 40 + int(draw.textlength(label, font=font))
    return image


def _ticks(rows: list[dict], count: int = 8) -> list[int]:
    if not rows:
        return []
    return sorted(set(np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int).tolist()))


def render_html(report: dict, image: Image.Image) -> str:
    """A self-contained HTML page: the picture (embedded PNG), the summary and the per-frame table."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    esc = html.escape
    rows = "".join(
        f"<tr><td>{r['index']}</td><td>{r.get('time_s', '')}</td><td>{'yes' if r['kept'] else 'no'}</td>"
        f"<td>{'full' if r['high_res'] else ('low' if r['kept'] else '')}</td><td>{r['tokens']}</td></tr>"
        for r in report["frames"]
    )
    warning = (
        "<p style='color:#c81e1e'><b>Random weights: this shows the mechanics only; the answer is meaningless.</b></p>"
        if report.get("random_weights") else ""
    )
    answer = f"<p><b>answer:</b> {esc(report['answer'])}</p>" if report.get("answer") is not None else ""
    summary = "".join(f"<li>{esc(line)}</li>" for line in summary_lines(report))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>LongVU compression report</title>"
        "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style>"
        "</head><body>\n"
        f"<h1>LongVU compression report</h1>{warning}"
        f"<p><b>video:</b> {esc(report['video'])}<br><b>model:</b> {esc(report['model'])}<br>"
        f"<b>question:</b> {esc(report['question'])}</p>{answer}<ul>{summary}</ul>\n"
        f"<img alt='compression report' src='data:image/png;base64,{png}'>\n"
        "<details><summary>every sampled frame</summary><table><tr><th>frame</th><th>time (s)</th><th>kept</th>"
        f"<th>resolution</th><th>tokens</th></tr>{rows}</table></details>\n"
        "<details><summary>JSON</summary><pre>"
        f"{esc(json.dumps(report, indent=2))}</pre></details>\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write through a temporary file in the target folder, then rename: an interruption leaves no partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_thumbnails(
    report: dict, frames: Any, video_size: tuple[int, int] | None, limit: int = MAX_THUMBNAILS
) -> dict[int, Image.Image]:
    """Thumbnails of (at most `limit`) kept frames from the processor's uint8 `pixel_values_videos` of this video."""
    if frames is None:
        return {}
    return {i: thumbnail_from_pixels(frames[i], video_size, 90) for i in thumbnail_picks(report, limit)}


def thumbnail_picks(report: dict, limit: int = MAX_THUMBNAILS) -> list[int]:
    """The sampled frames whose thumbnails the picture shows: at most `limit` kept frames, evenly spread."""
    return pick_thumbnail_frames(as_compression_report(report["compression"]).kept_frame_indices, limit)


def save_report(
    report: dict,
    out_path: str | os.PathLike | None = None,
    *,
    json_path: str | os.PathLike | None = None,
    frames: Any = None,
    video_size: tuple[int, int] | None = None,
    thumbnails: dict[int, Image.Image] | None = None,
) -> None:
    """Write the picture (`.png`, or `.html` with the picture embedded) and/or the JSON, each atomically.

    Args:
        frames: the processor's uint8 `pixel_values_videos` of this video, for the thumbnails (optional).
        video_size: (height, width) of the source video, to crop the padding off the thumbnails.
        thumbnails: thumbnails already made, by sampled frame (`VideoInfo.thumbnail_images(thumbnail_picks(report))`
            of a streamed video), instead of `frames`.
    """
    if out_path is not None:
        suffix = Path(out_path).suffix.lower()
        if suffix not in REPORT_FORMATS:
            raise ValueError(f"--out {out_path}: the report is written as .png or .html, not {suffix or 'no suffix'!r}")
        if thumbnails is None:
            thumbnails = make_thumbnails(report, frames, video_size)
        image = render_png(report, thumbnails)
        if suffix == ".png":
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
        else:
            data = render_html(report, image).encode("utf-8")
    if json_path is not None:
        json_data = (json.dumps(report, indent=2) + "\n").encode("utf-8")
    # Render everything before writing anything, so that a failure leaves no half-written pair.
    if out_path is not None:
        write_atomically(out_path, data)
    if json_path is not None:
        write_atomically(json_path, json_data)


__all__ = ["build_report", "compression_summary", "frame_table", "render_html", "render_png", "save_report",
           "summary_lines", "thumbnail_picks"]
