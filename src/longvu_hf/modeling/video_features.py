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
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT_VERSION = 1
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

    # -- files ---------------------------------------------------------------------------------------------------------

    @staticmethod
    def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
        return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write `path.safetensors` (the tensors) and `path.json` (sizes, settings, the model's fingerprint)."""
        from safetensors.torch import save_file

        if any(video is None for video in self.videos):
            raise ValueError("Only encoded videos can be saved: this LongVUVideoFeatures has entries left to the pixels")
        tensors_path, meta_path = self._paths(path)
        tensors, videos = {}, []
        for i, video in enumerate(self.videos):
            tensors[f"{i}.sva"] = video.sva.contiguous().cpu()
            tensors[f"{i}.candidate_indices"] = video.candidate_indices.cpu()
            tensors[f"{i}.selected_indices"] = video.selected_indices.cpu()
            videos.append({"num_input_frames": video.num_input_frames, "size_hw": list(video.size_hw),
                           "all_frames_kept": video.all_frames_kept})
        save_file(tensors, str(tensors_path), metadata={"format": "longvu-video-features"})
        digest = hashlib.sha256(tensors_path.read_bytes()).hexdigest()
        meta = {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint, "settings": self.settings,
                "videos": videos, "tensors_sha256": digest}
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
        return tensors_path, meta_path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> LongVUVideoFeatures:
        """Read features written by `save`; a missing, truncated or edited file is a ValueError naming it."""
        from safetensors.torch import load_file

        tensors_path, meta_path = cls._paths(path)
        for file in (tensors_path, meta_path):
            if not file.is_file():
                raise FileNotFoundError(f"video features: {file} does not exist")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"video features: {meta_path} is not valid JSON ({error})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"video features: {meta_path} has format {meta.get('format_version')!r}, "
                             f"expected {FORMAT_VERSION}")
        if hashlib.sha256(tensors_path.read_bytes()).hexdigest() != meta.get("tensors_sha256"):
            raise ValueError(f"video features: {tensors_path} was changed or truncated since it was saved")
        tensors = load_file(str(tensors_path), device=str(device))
        videos = [
            EncodedVideo(
                num_input_frames=int(info["num_input_frames"]),
                size_hw=tuple(int(v) for v in info["size_hw"]),
                candidate_indices=tensors[f"{i}.candidate_indices"],
                sva=tensors[f"{i}.sva"],
                selected_indices=tensors[f"{i}.selected_indices"],
                all_frames_kept=bool(info["all_frames_kept"]),
            )
            for i, info in enumerate(meta["videos"])
        ]
        return cls(videos, fingerprint=meta["fingerprint"], settings=meta["settings"])


def model_fingerprint(model) -> str:
    """What encoded features depend on: the config (less per-call settings) and the towers' and aggregator's weights
    (a sample of every parameter, so that the check costs milliseconds)."""
    config = {k: v for k, v in model.config.to_diff_dict().items() if k not in _NOT_IDENTITY}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in ("vision_tower", "dino_tower", "vision_aggregator"):
        for parameter_name, parameter in getattr(model, name).named_parameters():
            sample = parameter.detach().flatten()[:256].float().cpu()
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
