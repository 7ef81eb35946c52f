"""Answering one benchmark question with a LongVU model through the library layer (`longvu_hf.session`): each video is
streamed into the towers once for all its questions (`VideoSession`), the prompt is the chat template's with one
video placeholder (`longvu_hf.chat`), and the answer is `generate`'s under the protocol's settings."""

from __future__ import annotations

import os
from typing import Any

from ..configuration_longvu import CompressionSettings
from ..media_inputs import InputPolicy, resolve_media
from ..modeling.compression_report import CompressionReport
from ..session import VideoSession, check_bounds
from .answers import parse_answer
from .prompts import subtitles_block
from .protocols import BenchmarkProtocol
from .sampling import load_frame_folder, read_srt, select_subtitles, video_sampling_kwargs


def protocol_compression_settings(protocol: BenchmarkProtocol) -> CompressionSettings:
    """The protocol's model settings (the official scripts set the STC/DINO thresholds per benchmark) as per-call
    `CompressionSettings`: the model's config is never changed."""
    try:
        return CompressionSettings.from_value(dict(protocol.model_overrides))
    except ValueError as error:
        raise ValueError(f"The {protocol.benchmark} protocol's model_overrides: {error}") from None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class VideoQAPredictor:
    """Answers evaluation rows (see `benchmarks.EVAL_FEATURES`) with a model and its processor under a protocol.

    Calling it on a row returns the record that is streamed to disk: the raw generation, both parses of the answer,
    and the compression statistics of the video (the compression report `generate` returns). A question whose video cannot be read
    (missing, corrupt, a clip holding no frame) or that the model refuses (e.g. a prompt leaving no room for the video)
    gives a record with `error` set instead, so it is reported and never scored as a wrong answer.

    Example:

    ```python
    >>> predictor = VideoQAPredictor(model, processor, get_protocol("mlvu", "strict"))  # doctest: +SKIP
    >>> predictor(dataset[0])["parsed"]  # doctest: +SKIP
    {'reference': 'B', 'robust': 'B'}
    ```
    """

    def __init__(
        self,
        model,
        processor,
        protocol: BenchmarkProtocol,
        subtitles: bool = False,
        video_backend: str = "auto",
        apply_overrides: bool = True,
    ):
        """`apply_overrides`: use the protocol's thresholds (`protocol.model_overrides`) for every question, as
        per-call `compression_settings`; otherwise the model's own."""
        self.model = model
        self.processor = processor
        self.protocol = protocol
        self.subtitles = subtitles
        self.video_backend = video_backend
        self.compression_settings = protocol_compression_settings(protocol) if apply_overrides else None
        # The last video's session (its encoding): the next questions about it skip decoding and encoding.
        self._session: tuple[tuple, VideoSession] | None = None

    # -- inputs ------------------------------------------------------------------------------------------------------

    # Benchmark videos are the user's own files: the local user's input policy (longvu_hf.media_inputs).
    input_policy = InputPolicy.local_user()

    def _video(self, row: dict) -> tuple[Any, dict]:
        """The video to hand to the processor and the processor options that sample it officially."""
        clip = (row["clip_start"], row["clip_end"]) if row.get("clip_start") is not None else None
        if row["video_kind"] == "frames":
            folder = row["video"]
            if os.path.isdir(folder):  # else load_frame_folder names the missing folder
                folder = str(resolve_media(folder, self.input_policy).path)
            frames, _ = load_frame_folder(folder, self.protocol.frame_folder_fps, self.protocol.sample_fps, clip)
            return frames, {"do_sample_frames": False}
        if not os.path.isfile(row["video"]):
            raise FileNotFoundError(f"Video not found: {row['video']}")
        sampling = video_sampling_kwargs(self.protocol, clip)
        source = resolve_media(row["video"], self.input_policy)  # not a video, a playlist, ...: refused here
        check_bounds(source, self.input_policy, sampling)
        return source, {"video_backend": self.video_backend, **sampling}

    def _subtitles(self, row: dict, video: Any, video_kwargs: dict) -> str:
        """The official VideoMME subtitles for the frames the processor will sample ("" without an .srt)."""
        if not (self.subtitles and row.get("subtitle")):
            return ""
        from ..processing.video_decoding import open_frame_source

        video_processor = self.processor.video_processor
        metadata = open_frame_source(video, self.video_backend, policy=self.input_policy).metadata
        sampling = {key: value for key, value in video_kwargs.items() if key != "video_backend"}
        indices = video_processor.sample_frames(metadata, **sampling)
        tokenizer = self.processor.tokenizer
        return select_subtitles(
            read_srt(row["subtitle"]),
            [int(i) for i in indices],
            float(metadata.fps),
            count_tokens=lambda text: len(tokenizer(text).input_ids),
            token_limit=self.protocol.subtitle_token_limit,
        )

    @staticmethod
    def video_key(row: dict) -> tuple:
        """What decides a question's video input: questions with the same key share one encoding."""
        return (row["video"], row["video_kind"], row.get("clip_start"), row.get("clip_end"))

    def prompt_inputs(self, row: dict) -> tuple[dict, bool]:
        """The question's chat prompt (`input_ids`/`attention_mask`, one video placeholder; `longvu_hf.chat`'s
        tokenization rule) and whether subtitles were added."""
        video, video_kwargs = self._video(row)
        subtitles = self._subtitles(row, video, video_kwargs)
        question = subtitles_block(subtitles) + row["prompt"]
        return VideoSession(self.model, self.processor, None).prompt(question), bool(subtitles)

    # -- generation --------------------------------------------------------------------------------------------------

    def session(self, row: dict) -> VideoSession:
        """The `VideoSession` of the row's video: opened (streamed into the towers once) only when it differs from
        the previous question's (the runner orders questions by video)."""
        key = self.video_key(row)
        if self._session is None or self._session[0] != key:
            self._session = None  # the previous video's encoding goes before the next one is made
            video, video_kwargs = self._video(row)
            self._session = (key, VideoSession.open(
                self.model, self.processor, video, policy=self.input_policy,
                compression_settings=self.compression_settings, **video_kwargs,
            ))
        return self._session[1]

    def encoded_inputs(self, row: dict) -> tuple[dict, bool]:
        """The prompt of one question with the video's encoding (`video_features`), and whether subtitles were
        added."""
        inputs, with_subtitles = self.prompt_inputs(row)
        return {**inputs, "video_features": self.session(row).features}, with_subtitles

    def generate(self, inputs) -> tuple[str, CompressionReport]:
        """Greedy answer text (special tokens removed) and the video's compression report, from a prompt with its
        `video_features` (`encoded_inputs`)."""
        prompt = {key: value for key, value in inputs.items() if key != "video_features"}
        session = VideoSession(self.model, self.processor, inputs["video_features"],
                               compression_settings=self.compression_settings)
        answer = session.generate(prompt, max_new_tokens=self.protocol.max_new_tokens,
                                  do_sample=self.protocol.do_sample, num_beams=1)
        return answer.text, answer.compression

    def __call__(self, row: dict) -> dict:
        record = {"id": row["id"], "category": row.get("category") or "", "answer": row.get("answer")}
        try:
            inputs, with_subtitles = self.encoded_inputs(row)
        except Exception as error:  # anything wrong with this question's data is recorded, not fatal
            record["error"] = _describe(error)
            return record
        try:
            text, report = self.generate(inputs)
        except ValueError as error:  # the budget check (BudgetError: the prompt leaves no room for the video), ...
            record["error"] = _describe(error)
            return record
        if not isinstance(report, CompressionReport):  # its JSON form (from the vLLM engine)
            report = CompressionReport.from_dict(report)
        record.update(
            output=text,
            parsed=parse_answer(text, row["letters"], self.protocol.benchmark, list(row.get("options") or [])),
            prompt_tokens=int(inputs["input_ids"].shape[1]),
            subtitles_used=with_subtitles,
            frames_sampled=report.num_input_frames,
            frames_kept=len(report.kept_frame_indices),
            frames_high_res=len(report.high_res_frame_indices),
            visual_tokens=report.num_visual_tokens,
            compression_path=report.path,
        )
        return record


__all__ = ["VideoQAPredictor", "protocol_compression_settings"]
