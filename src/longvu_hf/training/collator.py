"""Batches for LongVU training: media decoding, chat-template tokenisation, loss masks, padding, video batching.

Each sample becomes `input_ids` with ONE placeholder token per video/image (the model expands it to the compressed
visual length and labels the expanded positions -100 itself; the loss is computed over the expanded sequence).

Loss masks (`label_mode`):

- `"assistant"` (default): only assistant turns are supervised: the answer text and the end-of-turn token the chat
  template writes after it (`<|im_end|>` for Qwen2, `<|eot_id|>` for Llama 3), so the model learns to stop. The role
  header of the turn (`<|im_start|>assistant\\n`), the system and user turns and the placeholders are -100.
- `"reference"`: the official recipe (docs/reference.md §7.2, the LLaVA-OneVision masking): whole assistant turns, role
  header and trailing newline included, plus a few tokens that are supervised *everywhere*, even inside system and
  user turns: for Qwen2 `"\\n"`, `<|im_start|>` and `<|im_end|>`; for Llama 3 `<|begin_of_text|>`,
  `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>` and `"\\n\\n"`.

Not reproduced: the reference's collator reserves `image_token_len + sqrt(image_token_len)` slots after the image
token and fills them with token id 0 ("!"), which stay in the training sequence after the visual tokens (docs/reference.md
§7.4). Inference never sees them, so here the sequence is exactly what inference sees: text, placeholder, text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .data import MediaError, load_image, resolve_media_path, video_processor_input

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
LABEL_MODES = ("assistant", "reference")
SKIPPED_SAMPLES_KEY = "num_skipped_samples"
# Tokens the reference supervises in every turn, per chat format (mm_datautils.py:649,695-699 and :734-741).
REFERENCE_SUPERVISED_TOKENS = {
    "chatml": ("<|im_start|>", "<|im_end|>", "\n"),
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "\n\n"),
}


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    video: dict[str, torch.Tensor] | None = None
    image: dict[str, torch.Tensor] | None = None


class SampleSkipped(Exception):
    """Raised while encoding a sample that must be left out of the batch (the reason is logged and counted); `kind`
    is "too long", "nothing to learn" or "media"."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.kind = kind


class TooManySkippedSamples(RuntimeError):
    """`max_consecutive_skips` samples in a row could not be used: a wrong `media_root` or data file, not bad files."""


@dataclass
class LongVUDataCollator:
    """Turns rows of `load_conversation_dataset` into LongVU model inputs, decoding media on the fly.

    Rows whose media is missing or cannot be decoded, whose text exceeds `max_length`, or that have nothing to learn
    from are **dropped from the batch** with a warning and counted in `skipped` (never replaced by another sample).
    If a whole batch is dropped, a minimal batch with a black image and no supervised token is returned instead, so
    that every process still runs its forward/backward; `LongVUTrainer` gives it a loss of exactly zero (no
    gradient).

    Args:
        processor: the model's `LongVUProcessor` (tokenizer, chat template, video processor).
        media_root: folder that relative media paths are resolved against (the reference's `image_folder`).
        video_fps: frame rate at which video files are sampled (1 in the reference's stage 2). Frame folders, gifs and
            `.npy` arrays keep every frame, as in the reference.
        max_frames: optional cap on the frames of one video (uniformly spread); `None` = no cap, as the reference.
        label_mode: `"assistant"` (default) or `"reference"` (see the module docstring).
        reference_supervised_tokens: tokens supervised everywhere in `"reference"` mode; by default detected from the
            tokenizer (ChatML / Qwen2 or Llama 3).
        max_length: samples whose text (with one token per placeholder) is longer are skipped. The visual tokens are
            budgeted by the model itself within `config.max_context_length`.
        max_consecutive_skips: raise instead of skipping once this many samples in a row failed, which almost always
            means a wrong `media_root` or a broken installation rather than bad files.

    Example:

    ```python
    >>> collator = LongVUDataCollator(processor, media_root="/data/videochat2", video_fps=1.0)
    >>> batch = collator([dataset[0], dataset[1]])
    >>> sorted(batch)  # doctest: +NORMALIZE_WHITESPACE
    ['attention_mask', 'input_ids', 'labels', 'pixel_values_videos', 'pixel_values_videos_dino',
     'video_num_frames', 'video_sizes']
    >>> collator.skipped  # samples left out so far, with the reason
    []
    ```
    """

    processor: Any
    media_root: str | None = None
    video_fps: float = 1.0
    max_frames: int | None = None
    label_mode: str = "assistant"
    reference_supervised_tokens: Sequence[str] | None = None
    max_length: int | None = None
    max_consecutive_skips: int = 100
    return_skip_counts: bool = False
    skipped: list[dict] = field(default_factory=list, init=False, repr=False)
    _consecutive_skips: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {self.label_mode!r}")
        tokenizer = self.processor.tokenizer
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.processor.video_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.processor.image_token)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.always_supervised_ids: set[int] = set()
        if self.label_mode == "reference":
            self.always_supervised_ids = self._token_ids(self.reference_supervised_tokens or self._detect_chat_format())

    # -- label masks ---------------------------------------------------------------------------------------------------

    def _detect_chat_format(self) -> tuple[str, ...]:
        # The chat template tells which format the conversations are rendered in (a vocabulary may hold both).
        template = getattr(self.processor, "chat_template", None) or ""
        if not isinstance(template, str):
            template = str(template)
        if "<|im_start|>" in template:
            return REFERENCE_SUPERVISED_TOKENS["chatml"]
        if "<|start_header_id|>" in template:
            return REFERENCE_SUPERVISED_TOKENS["llama3"]
        raise ValueError(
            "label_mode='reference' needs the tokens the reference supervises everywhere; the tokenizer is neither "
            "ChatML (Qwen2) nor Llama 3, so pass `reference_supervised_tokens`"
        )

    def _token_ids(self, tokens: Sequence[str]) -> set[int]:
        tokenizer = self.processor.tokenizer
        ids = set()
        for token in tokens:
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(f"{token!r} is not a single token for this tokenizer ({encoded})")
            ids.add(encoded[0])
        return ids

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def supervised_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans to supervise, one per assistant turn.

        Spans come from rendering growing prefixes of the conversation with the processor's own chat template, so any
        template works as long as rendering is prefix-stable (true of ChatML and Llama 3 templates).
        """
        text = self._render(messages)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            through_turn = self._render(messages[: index + 1])
            before_turn = self._render(messages[:index]) if self.label_mode == "reference" else self._render(
                messages[:index], add_generation_prompt=True
            )
            if not (text.startswith(through_turn) and through_turn.startswith(before_turn)):
                raise ValueError(
                    "The chat template does not render conversations prefix by prefix, so assistant turns cannot be "
                    "located; use a template whose rendering of the first k turns is a prefix of the full rendering"
                )
            # "assistant": the answer and its end-of-turn token, not the newline the template writes after it.
            end = len(through_turn) if self.label_mode == "reference" else len(through_turn.rstrip())
            spans.append((len(before_turn), end))
        return text, spans

    def tokenize_with_labels(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """`input_ids` and `labels` of one conversation (placeholders included once, labelled -100)."""
        text, spans = self.supervised_spans(messages)
        encoding = self.processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoding["input_ids"])
        labels = []
        for token_id, (start, end) in zip(input_ids, encoding["offset_mapping"]):
            inside = any(span_start <= start and end <= span_end for span_start, span_end in spans)
            supervised = inside or token_id in self.always_supervised_ids
            if token_id in (self.video_token_id, self.image_token_id):
                supervised = False
            labels.append(token_id if supervised else IGNORE_INDEX)
        return input_ids, labels

    # -- one sample ----------------------------------------------------------------------------------------------------

    def build_messages(self, row: dict) -> list[dict]:
        """Chat messages with content blocks; the media block leads the turn that held the `<image>`/`<video>` tag."""
        messages = []
        for index, (role, text) in enumerate(zip(row["roles"], row["texts"])):
            content = []
            if index == row["media_turn"]:
                content.append({"type": row["media_type"]})
            content.append({"type": "text", "text": text})
            messages.append({"role": role, "content": content})
        return messages

    def _encode_media(self, row: dict) -> tuple[dict | None, dict | None]:
        media_type = row["media_type"]
        if media_type == "text":
            return None, None
        path = resolve_media_path(row["media_path"], self.media_root)
        video_processor = self.processor.video_processor
        if media_type == "image":
            image = load_image(path)
            try:
                return None, dict(video_processor.preprocess_images(image, return_tensors="pt"))
            except Exception as error:
                raise MediaError(path, f"cannot process image ({type(error).__name__}: {error})") from None
        video, sample_frames = video_processor_input(path)
        kwargs = {"do_sample_frames": sample_frames, "return_tensors": "pt"}
        if sample_frames:
            kwargs["fps"] = self.video_fps
        if self.max_frames is not None:
            kwargs["max_frames"] = self.max_frames
        try:
            return dict(video_processor(videos=video, **kwargs)), None
        except Exception as error:  # decoders raise many types (av.error.*, RuntimeError, ValueError, ...)
            raise MediaError(path, f"cannot decode video ({type(error).__name__}: {error})") from None

    def encode(self, row: dict) -> EncodedSample:
        """One dataset row -> token ids, labels and pixels. Raises `SampleSkipped` for rows to leave out."""
        messages = self.build_messages(row)
        input_ids, labels = self.tokenize_with_labels(messages)
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise SampleSkipped(f"text of {len(input_ids)} tokens exceeds max_length={self.max_length}", "too long")
        if all(label == IGNORE_INDEX for label in labels):
            raise SampleSkipped("no supervised token (empty answers)", "nothing to learn")
        try:
            video, image = self._encode_media(row)
        except MediaError as error:
            raise SampleSkipped(str(error), "media") from None
        return EncodedSample(input_ids, labels, video, image)

    def _skip(self, row: dict, reason: str) -> None:
        self._consecutive_skips += 1
        self.skipped.append({"sample_id": row.get("sample_id", ""), "media_path": row.get("media_path", ""), "reason": reason})
        logger.warning("Skipping training sample %r: %s", row.get("sample_id", ""), reason)
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise TooManySkippedSamples(
                f"{self._consecutive_skips} training samples in a row could not be used (last: {reason}). Check "
                f"`media_root` ({self.media_root!r}) and the media paths of the data file."
            )

    # -- batch ---------------------------------------------------------------------------------------------------------

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        samples, skipped = [], 0
        for row in rows:
            try:
                samples.append(self.encode(row))
                self._consecutive_skips = 0
            except SampleSkipped as reason:
                skipped += 1
                self._skip(row, str(reason))
        if not samples:
            samples = [self._placeholder_sample()]
        batch = self.pad_and_stack(samples)
        if self.return_skip_counts:
            batch[SKIPPED_SAMPLES_KEY] = torch.tensor(skipped)
        return batch

    def _placeholder_sample(self) -> EncodedSample:
        """A black image and a one-word exchange with every label -100: keeps all processes' steps in lockstep."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "."}]},
        ]
        input_ids, labels = self.tokenize_with_labels(messages)
        image = self.processor.video_processor.preprocess_images(Image.new("RGB", (32, 32)), return_tensors="pt")
        return EncodedSample(input_ids, [IGNORE_INDEX] * len(labels), None, dict(image))

    def pad_and_stack(self, samples: list[EncodedSample]) -> dict[str, torch.Tensor]:
        """Right-pad the text (labels -100) and concatenate the frames of all videos (`video_num_frames` tells them
        apart, as the processor does) and all images."""
        width = max(len(sample.input_ids) for sample in samples)
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        for row, sample in enumerate(samples):
            length = len(sample.input_ids)
            input_ids[row, :length] = torch.tensor(sample.input_ids)
            attention_mask[row, :length] = 1
            labels[row, :length] = torch.tensor(sample.labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for kind in ("video", "image"):
            parts = [getattr(sample, kind) for sample in samples if getattr(sample, kind) is not None]
            if parts:
                batch.update({key: torch.cat([part[key] for part in parts]) for key in parts[0]})
        return batch


__all__ = ["IGNORE_INDEX", "LABEL_MODES", "LongVUDataCollator", "SKIPPED_SAMPLES_KEY", "SampleSkipped",
           "TooManySkippedSamples"]
