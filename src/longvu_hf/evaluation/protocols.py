"""Evaluation protocols: how each benchmark is sampled, prompted, decoded and scored.

The `reference` preset reproduces the official LongVU scripts (`eval/eval_*.py`, see `docs/evaluation.md` and
docs/evaluation.md): their frame rates and caps, the model thresholds they set, their prompts, greedy decoding with
`max_new_tokens=5`, their answer regexes and the "C" fallback. `strict` is the same run scored honestly: an answer
that names no option is wrong. Both parse the same generations, so one run reports both numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

BENCHMARKS = ("egoschema", "mvbench", "videomme", "mlvu")
PROTOCOLS = ("reference", "strict")


@dataclass(frozen=True)
class BenchmarkProtocol:
    """Everything that decides a benchmark score besides the model weights.

    Args:
        benchmark: one of `BENCHMARKS`.
        name: `"reference"` or `"strict"`.
        sample_fps: frames per second sampled from the video (the official scripts' integer frame step).
        frame_cap: when more frames than this are sampled, keep every `len // frame_cap`-th (official quirk: this can
            keep up to `2 * frame_cap - 1` frames); `None` for no cap.
        frame_folder_fps: the frame rate assumed for benchmarks shipped as JPEG folders (MVBench's TVQA task).
        model_overrides: config fields set on the model before the run (the official scripts set `drop_threshold`,
            here `stc_threshold`, and for MLVU `dino_threshold`).
        answer_parser: `"reference"` (the official regexes) or `"robust"` (`answers.extract_answer_letter`).
        fallback_letter: the letter an unparsable answer becomes; `None` scores it wrong.
        max_new_tokens, do_sample: decoding (the official scripts: 5, greedy).
        subtitle_token_limit: VideoMME subtitles longer than this (in tokens) are thinned, as the official script does.

    Example:

    ```python
    >>> from longvu_hf.evaluation import get_protocol
    >>> protocol = get_protocol("mlvu", "strict")
    >>> protocol.sample_fps, protocol.frame_cap, protocol.model_overrides
    (0.5, 1000, {'stc_threshold': 0.77, 'dino_threshold': 0.82})
    ```
    """

    benchmark: str
    name: str
    sample_fps: float
    frame_cap: int | None = None
    frame_folder_fps: float = 3.0
    model_overrides: dict = field(default_factory=dict)
    answer_parser: str = "robust"
    fallback_letter: str | None = None
    max_new_tokens: int = 5
    do_sample: bool = False
    subtitle_token_limit: int = 6000

    def to_dict(self) -> dict:
        return asdict(self)


# Per-benchmark settings of the official scripts (docs/reference.md §1.2, docs/evaluation.md).
_OFFICIAL_SETTINGS = {
    "videomme": {"sample_fps": 0.5, "frame_cap": None, "model_overrides": {"stc_threshold": 0.65}},
    "mlvu": {"sample_fps": 0.5, "frame_cap": 1000, "model_overrides": {"stc_threshold": 0.77, "dino_threshold": 0.82}},
    "egoschema": {"sample_fps": 0.5, "frame_cap": 1000, "model_overrides": {"stc_threshold": 0.8}},
    "mvbench": {"sample_fps": 2.0, "frame_cap": None, "model_overrides": {"stc_threshold": 0.8}},
}


def get_protocol(benchmark: str, name: str = "strict") -> BenchmarkProtocol:
    """The `reference` or `strict` protocol of a benchmark."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {name!r}; expected one of {PROTOCOLS}")
    settings = dict(_OFFICIAL_SETTINGS[benchmark])
    settings["model_overrides"] = dict(settings["model_overrides"])
    if name == "reference":
        return BenchmarkProtocol(benchmark, name, answer_parser="reference", fallback_letter="C", **settings)
    return BenchmarkProtocol(benchmark, name, answer_parser="robust", fallback_letter=None, **settings)


__all__ = ["BENCHMARKS", "PROTOCOLS", "BenchmarkProtocol", "get_protocol"]
