"""Encoded videos that can be asked many questions: the question-independent part of LongVU's video path, kept.

Most of LongVU's cost on a video is in the towers: DINOv2 on every sampled frame, then SigLIP and the Spatial Vision
Aggregator (SVA) on the frames DINOv2 keeps. None of it depends on the question; only the token budget (the prompt's
length) and resolution mixing (the query) do. `LongVUModel.encode_videos` runs the towers and the aggregator once and
returns `LongVUVideoFeatures`; `forward`, `generate` and `get_video_features` take them (`video_features=`) in place of
the pixels and give the same answers.

What is kept per video (`EncodedVideo`): the SVA output of the candidate frames and which frames DINOv2 selection
keeps. Whether selection runs depends on the prompt (it runs when the video has at least as many frames as the
budget allows): a video long enough that every prompt triggers it keeps only the selected frames; a shorter one keeps
every frame, so that both outcomes can be served. The settings that shape this (`dino_threshold`, and the largest
`max_context_length` / smallest `context_margin` it serves) are recorded and checked at use.

Files (`save` / `load`): `path.safetensors` holds the tensors (`{i}.sva`, `{i}.candidate_indices`,
`{i}.selected_indices`), `path.json` the rest and `sha256`, one checksum over the canonical JSON and the tensor bytes
(`_checksum`), so that an edited file, a truncated one or two files of different saves are refused. The checksum is
not a signature (anyone can recompute it), so `load` also checks every field against what the model relies on
(`_check_video`): a file that passes cannot make the model index out of range, divide by zero or answer from NaN.
What only the model knows (the aggregator's output shape and dtype) is checked at use (`check_geometry`).

Example:

```python
>>> features = model.encode_videos(**video_inputs)             # the processor's pixel_values_videos, ...
>>> for question in ("What happens first?", "Who is there?"):
...     ids = processor(text=prompt_for(question), return_tensors="pt")   # one <video> placeholder each
...     out = model.generate(**ids, video_features=features, max_new_tokens=32)
>>> features.save("clip.longvu")                              # clip.longvu.safetensors + clip.longvu.json
>>> features = LongVUVideoFeatures.load("clip.longvu")
```
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

# 2: one checksum over both files and every field checked on load; 1 (refused) checked only the tensors.
FORMAT_VERSION = 2
# Config fields that are per-call settings (recorded and checked separately) or bookkeeping, not the model's identity.
_NOT_IDENTITY = {
    "dino_threshold", "stc_threshold", "max_context_length", "context_margin", "_name_or_path", "transformers_version",
    "auto_map", "architectures", "dtype", "torch_dtype", "output_hidden_states", "output_attentions", "return_dict",
    "use_cache", "vision_chunk_size",
}


@dataclass
class EncodedVideo:
    """One video after the towers and the aggregator (see the module docstring).

    Attributes:
        num_input_frames: frames the processor sampled.
        size_hw: (height, width) of the source video, as the processor reports it.
        candidate_indices: the frames whose aggregator output is kept (sorted).
        sva: `(len(candidate_indices), num_queries, aggregator width)`, the aggregator output of those frames.
        selected_indices: the frames DINOv2 selection keeps (and caps), a subset of the candidates.
        all_frames_kept: True when the candidates are all the frames (a prompt leaving room for every frame skips
            selection); False when every prompt triggers selection.
    """

    num_input_frames: int
    size_hw: tuple[int, int]
    candidate_indices: torch.Tensor
    sva: torch.Tensor
    selected_indices: torch.Tensor
    all_frames_kept: bool

    def frames_for(self, selection_runs: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept frame indices and their aggregator output, with or without DINOv2 selection."""
        if not selection_runs:
            if not self.all_frames_kept:
                raise ValueError(
                    "These video features hold only the DINOv2-selected frames, but this prompt leaves room for every "
                    "frame (selection would not run): encode the video again with the settings of this call"
                )
            return self.candidate_indices, self.sva
        positions = torch.searchsorted(self.candidate_indices, self.selected_indices)
        return self.selected_indices, self.sva[positions.to(self.sva.device)]


class LongVUVideoFeatures(Sequence):
    """The encoded videos of a call, in placeholder order, plus what they were made with (see the module docstring).

    An entry may be None: that video comes from the pixels given next to the features (`pixel_values_videos`, ...),
    so a batch can mix encoded and new videos. `save(path)` writes `path.safetensors` and `path.json`; `load(path)`
    reads them back; the model refuses features made by another model or with other settings.
    """

    def __init__(self, videos: Sequence[EncodedVideo | None], *, fingerprint: str, settings: dict):
        self.videos = list(videos)
        self.fingerprint = fingerprint
        self.settings = dict(settings)  # dino_threshold, max_context_length, context_margin used when encoding

    def __getitem__(self, index):
        return self.videos[index]

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self) -> Iterator[EncodedVideo | None]:
        return iter(self.videos)

    def __repr__(self) -> str:
        kept = [None if v is None else len(v.candidate_indices) for v in self.videos]
        return f"LongVUVideoFeatures(videos={len(self.videos)}, frames_held={kept}, settings={self.settings})"

    def to(self, device) -> LongVUVideoFeatures:
        for video in self.videos:
            if video is not None:
                video.sva = video.sva.to(device)
        return self

    def check_geometry(self, num_queries: int, width: int, dtype: torch.dtype) -> None:
        """Refuse (ValueError naming the video) aggregator outputs that are not `(frames, num_queries, width)` in
        `dtype`, what the model's aggregator gives: `load` checks a file on its own, and only the model knows these."""
        for i, video in enumerate(self.videos):
            if video is None:
                continue
            if tuple(video.sva.shape[1:]) != (num_queries, width) or video.sva.dtype != dtype:
                raise ValueError(
                    f"`video_features` videos[{i}].sva holds {video.sva.dtype} values of {tuple(video.sva.shape[1:])} "
                    f"per frame, but this model's aggregator gives {dtype} values of {(num_queries, width)}: encode "
                    "the video again with this model"
                )

    # -- files ---------------------------------------------------------------------------------------------------------

    @staticmethod
    def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
        return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write `path.safetensors` (the tensors) and `path.json` (sizes, settings, the model's fingerprint and one
        SHA-256 over both files, see `_checksum`). Features that `load` would refuse are refused here (ValueError)."""
        from safetensors.torch import save as tensors_to_bytes

        if any(video is None for video in self.videos):
            raise ValueError("Only encoded videos can be saved: this LongVUVideoFeatures has entries left to the pixels")
        where = "LongVUVideoFeatures.save"
        tensors, videos, owned = {}, [], set()
        for i, video in enumerate(self.videos):
            # safetensors refuses tensors that share memory: the selected indices are often the candidates
            # themselves, and one video may appear twice. Indices are small; `sva` is copied only when shared.
            written = EncodedVideo(
                num_input_frames=int(video.num_input_frames),
                size_hw=tuple(int(v) for v in video.size_hw),
                candidate_indices=video.candidate_indices.detach().to("cpu", torch.int64).clone(),
                sva=_own_copy(video.sva.detach().to("cpu").contiguous(), owned),
                selected_indices=video.selected_indices.detach().to("cpu", torch.int64).clone(),
                all_frames_kept=bool(video.all_frames_kept),
            )
            try:
                _check_video(written, f"videos[{i}]")
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            tensors.update({f"{i}.{name}": getattr(written, name) for name in _TENSOR_NAMES})
            videos.append({"num_input_frames": written.num_input_frames, "size_hw": list(written.size_hw),
                           "all_frames_kept": written.all_frames_kept})
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                "settings": dict(self.settings), "videos": videos}
        _check_fingerprint(meta["fingerprint"], where)
        _check_settings(meta["settings"], where)
        data = tensors_to_bytes(tensors, metadata={"format": FORMAT_NAME})
        meta["sha256"] = _checksum(meta, data)
        tensors_path, meta_path = self._paths(path)
        # Both files written beside their final names first, so that an interrupted save leaves the old pair (or
        # a pair whose checksum fails), never a half-written file that looks complete.
        for final, content in ((tensors_path, data), (meta_path, (json.dumps(meta, indent=1) + "\n").encode())):
            partial = final.with_name(final.name + ".partial")
            partial.write_bytes(content)
            os.replace(partial, final)
        return tensors_path, meta_path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> LongVUVideoFeatures:
        """Read features written by `save`. Every field is checked (types, shapes, dtypes, finite values, index
        ranges, counts that agree with the tensors) and the checksum covers both files: a missing file is a
        FileNotFoundError; a truncated, edited, mismatched or malformed one a ValueError naming the file and field."""
        from safetensors.torch import load as tensors_from_bytes

        tensors_path, meta_path = cls._paths(path)
        for file in (tensors_path, meta_path):
            if not file.is_file():
                raise FileNotFoundError(f"video features: {file} does not exist")
        where = f"video features {meta_path}"
        try:
            meta = json.loads(meta_path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as error:
            raise ValueError(f"video features: {meta_path} is not valid JSON ({error})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(meta).__name__}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            hint = (" (written by an older longvu-hf whose checksum did not cover this file): encode the video again "
                    "with `encode_videos` and save it") if version == 1 else f", expected {FORMAT_VERSION}"
            raise ValueError(f"{where} has format {version!r}{hint}")
        _check_keys(meta, _META_KEYS, where, "")
        if not isinstance(meta["sha256"], str):
            raise ValueError(f"{where}: `sha256` must be a string, got {type(meta['sha256']).__name__}")
        data = tensors_path.read_bytes()  # read once: what is checked is what is loaded
        if _checksum({k: v for k, v in meta.items() if k != "sha256"}, data) != meta["sha256"]:
            raise ValueError(
                f"video features: {tensors_path} or {meta_path} was changed or truncated since it was saved, or the "
                "two files do not belong together (checksum mismatch): encode the video again"
            )
        # The checksum guards against accidents; a file edited with care (checksum recomputed) must still be safe
        # to use, so every field is checked as well.
        if meta["format"] != FORMAT_NAME:
            raise ValueError(f"{where}: `format` must be {FORMAT_NAME!r}, got {meta['format']!r}")
        _check_fingerprint(meta["fingerprint"], where)
        _check_settings(meta["settings"], where)
        infos = meta["videos"]
        if not isinstance(infos, list) or not infos:
            raise ValueError(f"{where}: `videos` must be a non-empty list, got {_shown(infos)}")
        try:
            tensors = tensors_from_bytes(data)
        except Exception as error:  # safetensors raises its own SafetensorError (and others) for malformed bytes
            raise ValueError(f"video features: {tensors_path} is not a valid safetensors file ({error})") from None
        expected = {f"{i}.{name}" for i in range(len(infos)) for name in _TENSOR_NAMES}
        if set(tensors) != expected:
            missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ValueError(
                f"video features: {tensors_path} does not hold the tensors of the {len(infos)} video(s) in "
                f"{meta_path} (missing: {missing}, unexpected: {unknown})"
            )
        videos = []
        for i, info in enumerate(infos):
            field = f"videos[{i}]"
            if not isinstance(info, dict):
                raise ValueError(f"{where}: `{field}` must be an object, got {_shown(info)}")
            _check_keys(info, _VIDEO_KEYS, where, f"{field}.")
            size_hw = info["size_hw"]
            if not isinstance(size_hw, list) or len(size_hw) != 2:
                raise ValueError(f"{where}: `{field}.size_hw` must be [height, width], got {_shown(size_hw)}")
            video = EncodedVideo(
                num_input_frames=info["num_input_frames"],
                size_hw=tuple(size_hw),
                candidate_indices=tensors[f"{i}.candidate_indices"],
                sva=tensors[f"{i}.sva"],
                selected_indices=tensors[f"{i}.selected_indices"],
                all_frames_kept=info["all_frames_kept"],
            )
            try:
                _check_video(video, field)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            videos.append(video)
        return cls(videos, fingerprint=meta["fingerprint"], settings=meta["settings"]).to(device)


# -- checks of saved (or about to be saved) features -----------------------------------------------------------------

FORMAT_NAME = "longvu-video-features"
_META_KEYS = ("format", "format_version", "fingerprint", "settings", "videos", "sha256")
_VIDEO_KEYS = ("num_input_frames", "size_hw", "all_frames_kept")
_TENSOR_NAMES = ("candidate_indices", "selected_indices", "sva")
_SETTINGS_KEYS = ("dino_threshold", "max_context_length", "context_margin")
_SVA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LARGEST_COUNT = 2**31 - 1  # frames, pixels, tokens: anything larger is not a real value (and would overflow int32)


def _checksum(meta_without_checksum: dict, tensor_bytes: bytes) -> str:
    """SHA-256 of the JSON fields (canonical form: sorted keys, no spaces) and then the tensor file's bytes: one
    value that changes when either file changes, or when two files of different saves are paired."""
    canonical = json.dumps(meta_without_checksum, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.sha256(f"{FORMAT_NAME}\n{len(canonical)}\n{canonical}\n".encode())
    digest.update(tensor_bytes)
    return digest.hexdigest()


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _shown(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return (text if len(text) <= 60 else text[:57] + "...") + f" ({type(value).__name__})"


def _check_keys(mapping: dict, keys: Sequence[str], where: str, prefix: str) -> None:
    missing = [k for k in keys if k not in mapping]
    unknown = sorted(str(k) for k in mapping if k not in keys)
    if missing:
        raise ValueError(f"{where}: missing field(s) {[prefix + k for k in missing]}")
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {[prefix + k for k in unknown]}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(value, field: str, minimum: int) -> None:
    if not _is_int(value) or not minimum <= value <= _LARGEST_COUNT:
        raise ValueError(f"`{field}` must be an integer from {minimum} to {_LARGEST_COUNT}, got {_shown(value)}")


def _check_fingerprint(value, where: str) -> None:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{where}: `fingerprint` must be 64 lowercase hex digits (a SHA-256), got {_shown(value)}")


def _check_settings(settings, where: str) -> None:
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: `settings` must be an object, got {_shown(settings)}")
    _check_keys(settings, _SETTINGS_KEYS, where, "settings.")
    threshold = settings["dino_threshold"]
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise ValueError(f"{where}: `settings.dino_threshold` must be a finite number, got {_shown(threshold)}")
    try:
        _check_count(settings["max_context_length"], "settings.max_context_length", 1)
        _check_count(settings["context_margin"], "settings.context_margin", 0)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _check_indices(indices, field: str, num_frames: int) -> None:
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.ndim != 1:
        is_tensor = isinstance(indices, torch.Tensor)
        shown = f"{indices.dtype} of shape {tuple(indices.shape)}" if is_tensor else _shown(indices)
        raise ValueError(f"`{field}` must be a 1-D int64 tensor, got {shown}")
    if len(indices) == 0:
        raise ValueError(f"`{field}` is empty (at least one frame is always kept)")
    if int(indices[0]) < 0 or int(indices[-1]) >= num_frames or not bool((indices[1:] > indices[:-1]).all()):
        raise ValueError(
            f"`{field}` must be sorted, unique frame indices from 0 to num_input_frames - 1 = {num_frames - 1}, got "
            f"{_shown(indices.tolist())}"
        )


def _check_video(video: EncodedVideo, field: str) -> None:
    """Everything `compress_video` relies on, with `field` (e.g. `videos[0]`) named in the ValueError."""
    _check_count(video.num_input_frames, f"{field}.num_input_frames", 1)
    size = video.size_hw
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"`{field}.size_hw` must be (height, width), got {_shown(size)}")
    for name, value in zip(("height", "width"), size):
        _check_count(value, f"{field}.size_hw ({name})", 1)
    if not isinstance(video.all_frames_kept, bool):
        raise ValueError(f"`{field}.all_frames_kept` must be true or false, got {_shown(video.all_frames_kept)}")
    frames = video.num_input_frames
    candidates, selected, sva = video.candidate_indices, video.selected_indices, video.sva
    _check_indices(candidates, f"{field}.candidate_indices", frames)
    _check_indices(selected, f"{field}.selected_indices", frames)
    if video.all_frames_kept and len(candidates) != frames:  # sorted, unique and in range: then 0..frames-1
        raise ValueError(
            f"`{field}.candidate_indices` hold {len(candidates)} frames, but `all_frames_kept` says all "
            f"{frames} frames (num_input_frames) are kept"
        )
    if video.all_frames_kept and not bool(torch.isin(selected, candidates).all()):
        raise ValueError(f"`{field}.selected_indices` are not a subset of `{field}.candidate_indices`")
    if not video.all_frames_kept and not torch.equal(selected, candidates):
        raise ValueError(
            f"`{field}.selected_indices` must equal `{field}.candidate_indices` when `all_frames_kept` is false (only "
            "the selected frames are kept)"
        )
    if not isinstance(sva, torch.Tensor) or sva.dtype not in _SVA_DTYPES or sva.ndim != 3:
        shown = f"{sva.dtype} of shape {tuple(sva.shape)}" if isinstance(sva, torch.Tensor) else _shown(sva)
        raise ValueError(f"`{field}.sva` must be a 3-D float32/float16/bfloat16 tensor, got {shown}")
    if sva.shape[0] != len(candidates) or 0 in sva.shape:
        raise ValueError(
            f"`{field}.sva` has shape {tuple(sva.shape)}: expected one row per candidate frame "
            f"({len(candidates)}) and a non-empty (queries, width)"
        )
    if not bool(torch.isfinite(sva).all()):
        raise ValueError(f"`{field}.sva` holds NaN or infinite values")


def _own_copy(tensor: torch.Tensor, owned: set) -> torch.Tensor:
    """`tensor`, or a copy of it when its memory is shared (with a tensor already written, or as a view of a larger
    buffer): safetensors writes each buffer once and refuses shared ones."""
    storage = tensor.untyped_storage()
    shared = storage.data_ptr() in owned or storage.nbytes() != tensor.numel() * tensor.element_size()
    if shared:
        tensor = tensor.clone()
    owned.add(tensor.untyped_storage().data_ptr())
    return tensor


def model_fingerprint(model) -> str:
    """What encoded features depend on: the config (less per-call settings) and the towers' and aggregator's weights
    (a sample of every parameter, so that the check costs milliseconds)."""
    def identity(values: dict) -> dict:  # sub-configs too: a reloaded model's say `dtype: "float32"`, not None
        return {k: identity(v) if isinstance(v, dict) else v for k, v in values.items() if k not in _NOT_IDENTITY}

    config = identity(model.config.to_diff_dict())
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in ("vision_tower", "dino_tower", "vision_aggregator"):
        for parameter_name, parameter in getattr(model, name).named_parameters():
            flat = parameter.detach().flatten()
            # 256 values spread over the whole tensor (first and last included), not only its first rows
            count = min(len(flat), 256)
            picks = torch.arange(count, device=flat.device) * (len(flat) - 1) // max(count - 1, 1)
            sample = flat[picks].float().cpu()
            digest.update(f"{name}.{parameter_name}:{tuple(parameter.shape)}:{parameter.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def settings_difference(made_with: dict, asked: dict) -> list[str]:
    """Why features made with `made_with` cannot serve a call with `asked` (empty when they can): the DINO threshold
    must match; the call's context may not leave more room for frames than the encoding's did."""
    problems = []
    if made_with["dino_threshold"] != asked["dino_threshold"]:
        problems.append(f"dino_threshold {made_with['dino_threshold']} (this call: {asked['dino_threshold']})")
    room_made = made_with["max_context_length"] - made_with["context_margin"]
    room_asked = asked["max_context_length"] - asked["context_margin"]
    if room_asked > room_made:
        problems.append(
            f"max_context_length - context_margin = {room_made} (this call: {room_asked}, which may keep frames the "
            "features do not hold)"
        )
    return problems


__all__ = ["EncodedVideo", "LongVUVideoFeatures", "model_fingerprint", "settings_difference"]
