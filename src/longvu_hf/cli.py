"""The `longvu` command: ask a question about a video, see what the compression did, convert checkpoints, demo.

    longvu ask VIDEO "question" [--model PATH_OR_HUB_ID] [--fps 1] [--max-frames N] [--max-new-tokens 128]
    longvu report VIDEO "question" --out report.png|report.html [--json report.json]
    longvu convert --checkpoint ... --siglip ... --dino ... --output ...    (the converter's own options)
    longvu demo [--out demo.png]                                          (offline, tiny model with random weights)

The model defaults to `Vision-CAIR/LongVU_Qwen2_7B` (or `$LONGVU_MODEL`). An official `Vision-CAIR/LongVU_*` id is
downloaded and converted on first use into `$HF_HOME/longvu-hf/converted/` (about 15 GB for the 7B checkpoint plus
the SigLIP and DINOv2-giant towers), then loaded from there; a converted folder or a Hub repository holding a
converted checkpoint is loaded as is.

Token budget (per call; the defaults are the reference's, stored in the model's config):
- `--max-context-length` (8192 for the released checkpoints): the context the compression fits prompt + video into;
- `--context-margin` (16): tokens kept free after the video;
- `--max-visual-tokens` (no default: whatever the context leaves, `max_context_length - prompt - margin`): an upper
  bound on the video's tokens, passed to `generate(..., max_visual_tokens=N)`; frame selection, resolution mixing and
  STC then work as if the context left exactly that many tokens.

Bad input (missing video or model, a folder that is not a LongVU checkpoint, a budget smaller than the prompt, ...)
ends with a one-line message saying how to fix it and exit status 2. Outputs are written to a temporary file and
renamed, so Ctrl-C never leaves a partial file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "Vision-CAIR/LongVU_Qwen2_7B"
DEFAULT_MODEL_ENV = "LONGVU_MODEL"
OFFICIAL_ORGANISATION = "Vision-CAIR"

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """Bad input: the message is one line that says what is wrong and how to fix it (exit status 2)."""


# --------------------------------------------------------------------------------------------------------------------
# Models: local folders, Hub ids, official checkpoints converted on first use
# --------------------------------------------------------------------------------------------------------------------


def default_model() -> str:
    return os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL


def converted_cache_dir(repo_id: str) -> Path:
    """Where an official checkpoint converted on first use is kept: `$HF_HOME/longvu-hf/converted/<org>--<name>`."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "longvu-hf" / "converted" / repo_id.replace("/", "--")


def _looks_like_repo_id(value: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None and not value.startswith((".", "~", "/"))


def _is_official_repo(repo_id: str) -> bool:
    return repo_id.split("/")[0].lower() == OFFICIAL_ORGANISATION.lower()


def check_longvu_folder(folder: Path, name: str) -> None:
    """Raise `CLIError` unless `folder` holds a converted LongVU checkpoint (config, weights)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CLIError(
            f"--model {name}: no config.json in this folder, so it is not a model folder; pass a folder written by "
            "`longvu convert` (or a Hub id)"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise CLIError(f"--model {name}: config.json is not valid JSON; re-run `longvu convert`") from None
    if model_type in ("cambrian_qwen", "cambrian_llama"):
        raise CLIError(
            f"--model {name}: this is an official LongVU checkpoint in its original format; convert it first: "
            f"longvu convert --checkpoint {name} --siglip google/siglip-so400m-patch14-384 "
            f"--dino facebook/dinov2-giant --output {name.rstrip('/')}-hf"
        )
    if model_type != "longvu":
        raise CLIError(
            f"--model {name}: config.json says model_type={model_type!r}, not a LongVU checkpoint ('longvu'); pass "
            "a folder written by `longvu convert`"
        )
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any((folder / w).is_file() for w in weights):
        raise CLIError(f"--model {name}: no weights (model.safetensors) in this folder; re-run `longvu convert`")


def _hub_error_message(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def ensure_converted(repo_id: str, quiet: bool) -> Path:
    """The converted copy of an official `Vision-CAIR/LongVU_*` checkpoint, converting it on first use."""
    target = converted_cache_dir(repo_id)
    if (target / "config.json").is_file():
        return target
    from huggingface_hub import constants

    from . import convert_longvu_weights_to_hf as converter

    fix = (
        f"run this command once on a machine with internet (it downloads {repo_id}, {converter.SIGLIP_HUB_ID} and "
        f"{converter.DINO_HUB_ID} and converts them into {target}), or convert local copies with `longvu convert "
        "--checkpoint DIR --siglip DIR --dino DIR --output DIR` and pass --model DIR"
    )
    if constants.HF_HUB_OFFLINE:
        raise CLIError(f"--model {repo_id}: not converted yet and HF_HUB_OFFLINE is set; {fix}")
    if not quiet:
        print(f"longvu: converting {repo_id} into {target} (first use only)", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The converter stages its output next to the target and moves it in at the end: no partial folder.
        converter.convert(repo_id, converter.SIGLIP_HUB_ID, converter.DINO_HUB_ID, target, dtype="bfloat16")
    except FileNotFoundError as error:  # the converter's way of saying "could not fetch"
        message = str(error).splitlines()[0] if str(error) else ""
        reason = re.search(r"\((\w+Error: [^()]*(?:\([^()]*\)[^()]*)*)\)", message)
        raise CLIError(
            f"--model {repo_id}: not converted yet and it could not be downloaded "
            f"({reason.group(1) if reason else message}); {fix}"
        ) from None
    return target


def resolve_model(value: str, quiet: bool = False) -> Path:
    """A local folder holding a converted LongVU checkpoint for `--model` (see the module docstring)."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CLIError(f"--model {value}: this is a file; pass the folder of a converted LongVU checkpoint")
        check_longvu_folder(path, value)
        return path
    if not _looks_like_repo_id(value):
        raise CLIError(f"--model {value}: no such folder (and not a Hub id like {DEFAULT_MODEL})")
    if _is_official_repo(value):
        folder = ensure_converted(value, quiet)
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(value))
        except Exception as error:  # offline, unknown or gated repository: all end the same way
            raise CLIError(
                f"--model {value}: not a local folder and not downloadable from the Hugging Face Hub "
                f"({_hub_error_message(error)}); download it on a machine with internet "
                f"(`hf download {value}`) or pass a local folder"
            ) from None
    check_longvu_folder(folder, value)
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {requested}: no CUDA GPU is visible to PyTorch; use --device cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?", requested):
        raise CLIError(f"--device {requested}: expected auto, cpu, cuda or cuda:N")
    return requested


def pick_dtype(requested: str, device: str):
    """`auto`: bfloat16 on GPUs (float16 overflows on long videos, REFERENCE.md §9.1 #17), else the checkpoint's."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if not device.startswith("cpu") else "auto"
    return getattr(torch, requested)


def load_model_and_processor(folder: Path, name: str, device: str, dtype: Any, quiet: bool):
    """Load a converted LongVU folder; errors become one-line `CLIError`s."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    from . import LongVUForConditionalGeneration, LongVUProcessor

    if quiet:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except Exception as error:
        raise CLIError(
            f"--model {name}: cannot load its tokenizer/processor ({_hub_error_message(error)}); a folder written "
            "by `longvu convert` from a checkpoint with a tokenizer holds one"
        ) from None
    if not isinstance(processor, LongVUProcessor):
        raise CLIError(f"--model {name}: its processor is a {type(processor).__name__}, not a LongVUProcessor")
    kwargs = {"dtype": dtype}
    if device.startswith("cuda"):
        kwargs["device_map"] = device
    model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
    if not isinstance(model, LongVUForConditionalGeneration):
        raise CLIError(f"--model {name}: loaded a {type(model).__name__}, not LongVUForConditionalGeneration")
    if not device.startswith("cuda"):
        model = model.to(device)
    return model.eval(), processor


# --------------------------------------------------------------------------------------------------------------------
# Token budget
# --------------------------------------------------------------------------------------------------------------------


def effective_budget(
    config, prompt_tokens: int, max_context_length: int | None = None, context_margin: int | None = None,
    max_visual_tokens: int | None = None,
) -> dict:
    """Validate the token settings of one call and work out the video's token budget.

    `prompt_tokens` counts the prompt without its video placeholder. The model budgets the video as
    `max_context_length - prompt - margin` (REFERENCE.md §3-§5); `max_visual_tokens` caps that (the model's own
    per-call argument: every step then budgets as if the context left exactly that many tokens). Returns the settings
    to apply (`max_context_length`, `context_margin` on the config; `max_visual_tokens` to `generate`/`forward`) and
    the resulting `visual_budget`. Raises `CLIError` when the prompt leaves no room.
    """
    context = config.max_context_length if max_context_length is None else max_context_length
    margin = config.context_margin if context_margin is None else context_margin
    if context < 1:
        raise CLIError(f"--max-context-length {context}: must be a positive number of tokens")
    if margin < 0:
        raise CLIError(f"--context-margin {margin}: must be 0 or more")
    if max_visual_tokens is not None and max_visual_tokens < 1:
        raise CLIError(f"--max-visual-tokens {max_visual_tokens}: must be at least 1")
    room = context - prompt_tokens - margin
    if room < 1:
        raise CLIError(
            f"the prompt takes {prompt_tokens} tokens and the margin {margin}, which leaves no room for the video in "
            f"a context of {context} tokens; raise --max-context-length to at least {prompt_tokens + margin + 1} or "
            "shorten the question"
        )
    return {
        "max_context_length": context,
        "context_margin": margin,
        "max_visual_tokens": max_visual_tokens,
        "prompt_tokens": prompt_tokens,
        "visual_budget": room if max_visual_tokens is None else min(room, max_visual_tokens),
    }


@contextlib.contextmanager
def token_budget(model, max_context_length: int, context_margin: int) -> Iterator[None]:
    """Set `max_context_length`/`context_margin` on `model.config` for the duration of one call, then restore them.

    Example:

    ```python
    >>> with token_budget(model, max_context_length=4096, context_margin=16):
    ...     out = model.generate(**inputs, max_new_tokens=64)
    ```
    """
    config = model.config
    saved = (config.max_context_length, config.context_margin)
    config.max_context_length, config.context_margin = max_context_length, context_margin
    try:
        yield
    finally:
        config.max_context_length, config.context_margin = saved


# --------------------------------------------------------------------------------------------------------------------
# Progress bars
# --------------------------------------------------------------------------------------------------------------------


def _bar(quiet: bool, **kwargs):
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal (stderr), never in logs or pipes.
    return tqdm(disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True, **kwargs)


def _count_sampled_frames(video_processor, video: Path, fps: float | None, max_frames: int | None) -> int | None:
    """How many frames the processor will sample (for the decoding bar); None if it cannot tell cheaply."""
    try:
        from .processing.video_decoding import open_frame_source

        source = open_frame_source(str(video), getattr(video_processor, "video_backend", None))
        return len(video_processor.sample_frames(source.metadata, fps=fps, max_frames=max_frames))
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


# --------------------------------------------------------------------------------------------------------------------
# The pipeline shared by ask, report and demo
# --------------------------------------------------------------------------------------------------------------------


def check_video(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise CLIError(f"video {value}: no such file; check the path")
    if not (path.is_file() or path.is_dir()):
        raise CLIError(f"video {value}: not a file")
    return path


def prepare_inputs(processor, video: Path, question: str, fps: float | None, max_frames: int | None, quiet: bool):
    """Chat prompt with one video, decoded and sampled by the processor; returns the inputs and the frame times."""
    messages = [{"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": question}]}]
    video_processor = processor.video_processor
    options = {"return_metadata": True}
    if fps is not None:
        options["fps"] = fps
    if max_frames is not None:
        options["max_frames"] = max_frames
    total = None if quiet else _count_sampled_frames(video_processor, video, fps, max_frames)
    try:
        with decoding_progress(video_processor, total, quiet):
            inputs = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                processor_kwargs=options,
            )
    except (ValueError, OSError, RuntimeError) as error:
        raise CLIError(f"video {video}: cannot be read ({str(error).strip().splitlines()[0][:300]})") from None
    metadata = inputs.pop("video_metadata", None)
    times = None
    if metadata:
        with contextlib.suppress(Exception):
            times = [float(t) for t in metadata[0].timestamps]
    return inputs, times


def run_model(
    model, processor, inputs, args, quiet: bool, generate: bool = True, echo: bool = True
) -> tuple[dict, str | None, dict]:
    """Encode (and answer, if `generate`) under the call's token budget (`max_context_length`/`context_margin` set
    on the config for the call, `max_visual_tokens` passed to the model); returns the model's compression report of
    the video, the answer, and the budget used."""
    import torch

    num_placeholders = int((inputs["input_ids"] == model.config.video_token_id).sum())
    prompt_tokens = int(inputs["attention_mask"].sum()) - num_placeholders
    budget = effective_budget(
        model.config, prompt_tokens, args.max_context_length, args.context_margin, args.max_visual_tokens
    )
    text_inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    pixel_inputs = {k: v for k, v in inputs.items() if k not in text_inputs}  # the model moves frames chunk by chunk
    num_frames = int(inputs["video_num_frames"].sum())
    answer = None
    with torch.no_grad(), token_budget(model, budget["max_context_length"], budget["context_margin"]):
        if generate:
            streamer = make_streamer(processor.tokenizer, args.max_new_tokens, quiet, echo=echo)
            with encoding_progress(model, num_frames, quiet):
                model.generate(
                    **text_inputs, **pixel_inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                    streamer=streamer, max_visual_tokens=budget["max_visual_tokens"],
                )
            compression = model.last_compression["video"][0]
            answer = streamer.answer
        else:
            with encoding_progress(model, num_frames, quiet):
                # Towers and compression only (no LLM); the prompt sets the budget.
                features = model.get_video_features(
                    pixel_inputs["pixel_values_videos"], pixel_inputs["pixel_values_videos_dino"],
                    pixel_inputs["video_num_frames"], pixel_inputs["video_sizes"],
                    text_inputs["input_ids"], text_inputs["attention_mask"],
                    max_visual_tokens=budget["max_visual_tokens"],
                )
            compression = features.compression[0]
    return compression, answer, budget


def print_summary(compression: dict, quiet: bool, fps: float | None = None, budget: dict | None = None) -> None:
    """The compression report in a few lines on stderr (the answer alone goes to stdout)."""
    if quiet:
        return
    from .report import summary_lines

    for line in summary_lines({"compression": compression, "sampling": {"fps": fps}, "budget": budget or {}}):
        print(f"longvu: {line}", file=sys.stderr)


def check_output_paths(out: str | None, json_path: str | None, overwrite: bool) -> tuple[Path | None, Path | None]:
    """Validate `--out`/`--json` before any work: suffix, existing folder, no silent overwrite."""
    from .report import REPORT_FORMATS

    paths = []
    for option, value, suffixes in (("--out", out, REPORT_FORMATS), ("--json", json_path, (".json",))):
        if value is None:
            paths.append(None)
            continue
        path = Path(value).expanduser()
        if path.suffix.lower() not in suffixes:
            raise CLIError(f"{option} {value}: the file name must end with {' or '.join(suffixes)}")
        if not path.parent.is_dir():
            raise CLIError(f"{option} {value}: the folder {path.parent} does not exist; create it first")
        if path.is_dir():
            raise CLIError(f"{option} {value}: this is a folder; give a file name")
        if path.exists() and not overwrite:
            raise CLIError(f"{option} {value}: the file exists; choose another name or pass --overwrite")
        paths.append(path)
    if paths[0] is not None and paths[0] == paths[1]:
        raise CLIError("--out and --json must be different files")
    return paths[0], paths[1]


def _load_for(args) -> tuple[Any, Any, str]:
    device = pick_device(args.device)
    name = args.model or default_model()
    folder = resolve_model(name, args.quiet)
    model, processor = load_model_and_processor(folder, name, device, pick_dtype(args.dtype, device), args.quiet)
    return model, processor, name


# --------------------------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------------------------


def cmd_ask(args) -> int:
    video = check_video(args.video)
    model, processor, _ = _load_for(args)
    inputs, _ = prepare_inputs(processor, video, args.question, args.fps, args.max_frames, args.quiet)
    compression, _, budget = run_model(model, processor, inputs, args, args.quiet)
    print_summary(compression, args.quiet, args.fps, budget)
    return EXIT_OK


def _write_report(
    args, video: Path, model_name: str, model, processor, random_weights: bool, video_label: str | None = None
) -> dict:
    from .report import build_report, save_report

    inputs, times = prepare_inputs(processor, video, args.question, args.fps, args.max_frames, args.quiet)
    compression, answer, budget = run_model(
        model, processor, inputs, args, args.quiet, generate=args.max_new_tokens > 0, echo=not args.quiet
    )
    report = build_report(
        compression, video=video_label or str(video), question=args.question, model_name=model_name, fps=args.fps,
        frame_times=times, answer=answer, random_weights=random_weights, budget=budget,
    )
    size = tuple(int(v) for v in inputs["video_sizes"][0])
    frames = inputs["pixel_values_videos"][: int(inputs["video_num_frames"][0])]
    save_report(report, args.out_path, json_path=args.json_path, frames=frames, video_size=size)
    print_summary(compression, args.quiet, args.fps, budget)
    for path in (args.out_path, args.json_path):
        if path is not None and not args.quiet:
            print(f"longvu: wrote {path}", file=sys.stderr)
    return report


def cmd_report(args) -> int:
    video = check_video(args.video)
    args.out_path, args.json_path = check_output_paths(args.out, args.json, args.overwrite)
    model, processor, name = _load_for(args)
    _write_report(args, video, name, model, processor, random_weights=False)
    return EXIT_OK


def cmd_convert(argv: list[str]) -> int:
    """`longvu convert ...`: the converter's own command line (`python -m longvu_hf.convert_longvu_weights_to_hf`)."""
    from . import convert_longvu_weights_to_hf as converter

    try:
        converter.main(argv)
    except SystemExit as exit_:  # its argparse: --help, or a one-line error with status 2
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        print("\nlongvu convert: interrupted (the converter stages its output: no partial folder is left)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------------
# Demo: the whole pipeline offline, on a generated clip, with a tiny random model
# --------------------------------------------------------------------------------------------------------------------

DEMO_WORDS = (
    "system user assistant You are a helpful . , ? What is happening in this video Describe the main events a "
    "red green blue yellow square circle moves left right up down scene changes and then the"
).split()


def demo_tokenizer():
    """A word-level tokenizer built in code (no download), with the ChatML control tokens and the placeholders."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>", "<image>"]
    vocab = {token: index for index, token in enumerate(specials + list(dict.fromkeys(DEMO_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>",
        extra_special_tokens={"video_token": "<video>", "image_token": "<image>"}, padding_side="left",
    )
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                                 replace_extra_special_tokens=False)
    return tokenizer


DEMO_CONTEXT_LENGTH = 3500  # small enough that the 90-frame clip goes through selection and mixing (1024: STC)


def demo_model(tokenizer, max_context_length: int = DEMO_CONTEXT_LENGTH):
    """A tiny random LongVU with the real input geometry (384/378 px, 24x24 grids, 12x12 queries)."""
    import torch

    from . import LongVUConfig, LongVUForConditionalGeneration

    config = LongVUConfig(
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 4096, "tie_word_embeddings": False,
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 384, "patch_size": 14},
        dino_config={"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "mlp_ratio": 2, "use_swiglu_ffn": True, "image_size": 518, "patch_size": 14},
        aggregator_hidden_size=32, aggregator_num_heads=4,
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        max_context_length=max_context_length,
    )
    torch.manual_seed(0)
    return LongVUForConditionalGeneration(config).eval()


def write_demo_clip(path: Path, seconds: int = 90, fps: int = 2, width: int = 128, height: int = 72) -> Path:
    """A clip of scenes (flat colour, a square moving across) of 5-25 s each, written with PyAV."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    scenes, start = [], 0
    while start < seconds * fps:
        length = int(rng.integers(5, 26)) * fps
        scenes.append((start, length, rng.integers(30, 226, size=3), rng.integers(0, 256, size=3)))
        start += length
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for index in range(seconds * fps):
            begin, length, background, square = next(s for s in scenes if s[0] <= index < s[0] + s[1])
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[:] = background
            x = int((index - begin) / max(length - 1, 1) * (width - 20))
            frame[height // 2 - 10 : height // 2 + 10, x : x + 20] = square
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cmd_demo(args) -> int:
    try:
        import av  # noqa: F401
    except ImportError:
        raise CLIError("the demo writes its clip with PyAV: pip install av (or pip install 'longvu-hf[video]')") from None
    from transformers.utils import logging as hf_logging

    from . import LongVUProcessor, LongVUVideoProcessor

    args.out_path, args.json_path = check_output_paths(args.out, args.json, args.overwrite)
    hf_logging.disable_progress_bar()  # saving and loading the tiny model are internal steps here
    if not args.quiet:
        print("longvu demo: a tiny model with RANDOM WEIGHTS on a generated clip; it shows the mechanics of the "
              "compression, and its answer is noise.", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="longvu-demo-") as workdir:
        workdir = Path(workdir)
        video = write_demo_clip(workdir / "demo.mp4")
        tokenizer = demo_tokenizer()
        model = demo_model(tokenizer, args.max_context_length or DEMO_CONTEXT_LENGTH)
        model_dir = workdir / "tiny-random-longvu"
        model.save_pretrained(model_dir)
        LongVUProcessor(tokenizer, LongVUVideoProcessor()).save_pretrained(model_dir)
        args.max_context_length = None  # already the model's own setting
        folder = resolve_model(str(model_dir), args.quiet)  # the same loading path as `ask`
        model, processor = load_model_and_processor(folder, "tiny-random-longvu", "cpu", "auto", args.quiet)
        if not args.quiet:
            print("answer (random weights): ", end="", flush=True)
        if args.out_path is None and args.json_path is None:
            inputs, _ = prepare_inputs(processor, video, args.question, args.fps, args.max_frames, args.quiet)
            compression, _, budget = run_model(model, processor, inputs, args, args.quiet)
            print_summary(compression, args.quiet, args.fps, budget)
        else:
            _write_report(args, video, "tiny-random-longvu (random weights)", model, processor, random_weights=True,
                          video_label="generated demo clip (90 s of coloured scenes)")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_video_options(
    parser: argparse.ArgumentParser, with_model: bool = True, max_new_tokens: int = 128, answer_optional: bool = False
) -> None:
    """The options shared by `ask`, `report` and `demo`; with `answer_optional`, `--max-new-tokens 0` skips the
    answer."""
    if with_model:
        parser.add_argument("--model", default=None, help=f"converted LongVU folder or Hub id (default: "
                            f"${DEFAULT_MODEL_ENV} or {DEFAULT_MODEL}, converted on first use)")
        parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
        parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                            help="auto: bfloat16 on GPUs, the checkpoint's dtype on CPU")
    parser.add_argument(
        "--fps", type=_positive_float, default=None,
        help="frames sampled per second (default: the processor's, 1; a folder of frames without a frame rate keeps "
        "every frame)",
    )
    parser.add_argument("--max-frames", type=_positive_int, default=None,
                        help="cap on the sampled frames, spread evenly (default: no cap, as the reference)")
    parser.add_argument("--max-new-tokens", type=_non_negative_int if answer_optional else _positive_int,
                        default=max_new_tokens,
                        help=f"answer length in tokens (default {max_new_tokens}"
                        + ("; 0: no answer, only the towers and the compression)" if answer_optional else ")"))
    parser.add_argument("--max-visual-tokens", type=int, default=None,
                        help="at most this many visual tokens (default: what the context leaves)")
    parser.add_argument("--max-context-length", type=int, default=None,
                        help="context the compression fits prompt + video into (default: the model's, 8192)")
    parser.add_argument("--context-margin", type=int, default=None,
                        help="tokens kept free after the video (default: the model's, 16)")
    parser.add_argument("--quiet", "-q", action="store_true", help="only the answer: no progress bars or summary")


def _add_output_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--out", required=required, default=None, help="the report picture: .png or .html")
    parser.add_argument("--json", default=None, help="the report as JSON (.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out/--json files")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line too (argparse prints the whole usage block first by default)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="longvu", description=__doc__.split("\n\n")[0],
        epilog="Run `longvu COMMAND --help` for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = commands.add_parser("ask", help="answer a question about a video (streams the answer)")
    ask.add_argument("video", help="video file (mp4, mkv, webm, ...) or folder of frames")
    ask.add_argument("question", help="the question, in quotes")
    _add_video_options(ask)
    ask.set_defaults(handler=cmd_ask)

    report = commands.add_parser("report", help="picture + JSON of what the compression did to a video")
    report.add_argument("video", help="video file or folder of frames")
    report.add_argument("question", help="the question (the query decides which frames keep full resolution)")
    _add_video_options(report, max_new_tokens=64, answer_optional=True)
    _add_output_options(report, required=True)
    report.set_defaults(handler=cmd_report)

    # `longvu convert ARGS` is handed to the converter as is (see `main`); listed here for `longvu --help`.
    commands.add_parser("convert", help="convert an official LongVU checkpoint (`longvu convert --help`)")

    demo = commands.add_parser("demo", help="the whole pipeline offline on a generated clip (tiny RANDOM model)")
    demo.add_argument("--question", default="What is happening in this video ?")
    _add_video_options(demo, with_model=False, max_new_tokens=12)
    _add_output_options(demo, required=False)
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `longvu` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        return cmd_convert(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse (status 2)
        return int(exit_.code or 0)
    try:
        return args.handler(args)
    except CLIError as error:
        print(f"longvu {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"\nlongvu {args.command}: interrupted (no partial output file is left)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
