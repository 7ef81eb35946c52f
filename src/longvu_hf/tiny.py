"""A tiny random LongVU, built offline: for trying the package, the `longvu demo`, tests and benchmarks.

The model has LongVU's real input geometry (384 px SigLIP and 378 px DINOv2 frames, 24x24 feature grids, 12x12
queries, the full compression) and tiny widths, so every step of the pipeline runs in seconds on a CPU. Its weights
are random: its answers are noise. Nothing is downloaded.

Example:

```python
>>> from longvu_hf.tiny import save_tiny_model, write_scene_clip
>>> folder = save_tiny_model("tiny-random-longvu")        # model + processor, loadable with from_pretrained
>>> clip = write_scene_clip("clip.mp4", seconds=20)        # coloured scenes with a moving square (needs PyAV)
```

or from the shell: `longvu demo --save tiny-random-longvu`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .configuration_longvu import LongVUConfig

# Control tokens of both backbones' chat templates and the two placeholders; they are special tokens.
SPECIAL_TOKENS = [
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<video>",
    "<image>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
WORDS = (
    "system user assistant You are a helpful . , ? ! : What is happening in this video image Describe the main "
    "events clip Question Options A B C D E Respond with only letter of correct option red square moves left right "
    "up down and it yes no"
).split()


def tiny_tokenizer(
    extra_words: tuple[str, ...] = (),
    video_token: str = "<video>",
    image_token: str = "<image>",
    padding_side: str | None = "left",
    num_filler_words: int = 32,
):
    """A word-level `PreTrainedTokenizerFast` built offline.

    Vocabulary: the ChatML and Llama-3 control tokens, the placeholders (special, registered as
    `tokenizer.video_token` / `tokenizer.image_token`), the words of `WORDS` + `extra_words`, and `num_filler_words`
    words "w0", "w1", ... so that random models generate something decodable. `len(tokenizer)` is the vocab size.
    Pad token `<|endoftext|>`, EOS `<|im_end|>`, no BOS (like Qwen2). `padding_side=None` leaves it unset.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [token for token in SPECIAL_TOKENS if token not in ("<video>", "<image>")] + [video_token, image_token]
    words = list(dict.fromkeys(list(WORDS) + list(extra_words) + [f"w{i}" for i in range(num_filler_words)]))
    vocab = {token: index for index, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    options = {} if padding_side is None else {"padding_side": padding_side}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_special_tokens={"video_token": video_token, "image_token": image_token},
        **options,
    )
    # Control tokens are special: decoding with skip_special_tokens drops them.
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [t for t in SPECIAL_TOKENS if t not in ("<video>", "<image>", "<unk>")]},
        replace_extra_special_tokens=False,
    )
    return tokenizer


def tiny_config(
    video_token_id: int,
    image_token_id: int,
    vocab_size: int,
    text_model_type: str = "qwen2",
    pad_token_id: int = 0,
    eos_token_id: int = 2,
    bos_token_id: int | None = 1,
    **overrides,
) -> LongVUConfig:
    """A LongVU config with real input geometry (384/378 px, 24x24 grids, 12x12 queries) and tiny widths.
    `overrides` are further `LongVUConfig` arguments."""
    text_config = {
        "model_type": text_model_type,
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": text_model_type == "llama",  # as the released Llama-3.2 checkpoints
        "pad_token_id": pad_token_id,
        "eos_token_id": eos_token_id,
        "bos_token_id": bos_token_id,
    }
    kwargs = {
        "text_config": text_config,
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 384,
            "patch_size": 14,
        },
        "dino_config": {
            "model_type": "dinov2",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "use_swiglu_ffn": True,
            "image_size": 518,
            "patch_size": 14,
        },
        "aggregator_hidden_size": 32,
        "aggregator_num_heads": 4,
        "video_token_index": video_token_id,
        "image_token_index": image_token_id,
        "max_context_length": 1024,
    }
    kwargs.update(overrides)
    return LongVUConfig(**kwargs)


def tiny_model(tokenizer=None, seed: int = 0, **config_overrides):
    """A tiny random `LongVUForConditionalGeneration` in eval mode, matched to `tokenizer` (default: `tiny_tokenizer()`):
    vocabulary size, placeholder ids, pad and EOS ids come from it. `config_overrides` go to `tiny_config`."""
    from .modeling import LongVUForConditionalGeneration

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    video_token = getattr(tokenizer, "video_token", None) or "<video>"
    image_token = getattr(tokenizer, "image_token", None) or "<image>"
    config_overrides.setdefault("video_token_id", tokenizer.convert_tokens_to_ids(video_token))
    config_overrides.setdefault("image_token_id", tokenizer.convert_tokens_to_ids(image_token))
    config_overrides.setdefault("vocab_size", len(tokenizer))
    config_overrides.setdefault("pad_token_id", tokenizer.pad_token_id)
    config_overrides.setdefault("eos_token_id", tokenizer.eos_token_id)
    config_overrides.setdefault("bos_token_id", tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = LongVUForConditionalGeneration(tiny_config(**config_overrides)).eval()
    # A marker saved with the config: front ends (the web page) say plainly that this model's answers are noise.
    model.config.random_weights = True
    return model


def save_tiny_model(folder: str | os.PathLike, max_context_length: int = 1024, seed: int = 0) -> Path:
    """Write a tiny random model with its processor into `folder` (created; must not hold a model already); the
    folder loads with `AutoModelForImageTextToText`/`AutoProcessor.from_pretrained`, with `longvu --model`, and with
    `trust_remote_code=True` where longvu-hf is not installed."""
    from .processing import LongVUProcessor, LongVUVideoProcessor

    folder = Path(folder)
    if (folder / "config.json").exists():
        raise FileExistsError(f"{folder} already holds a model (config.json); choose another folder")
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, seed=seed, max_context_length=max_context_length).save_pretrained(folder)
    LongVUProcessor(tokenizer, LongVUVideoProcessor()).save_pretrained(folder)
    return folder


def write_scene_clip(
    path: str | os.PathLike, seconds: int = 90, fps: int = 2, width: int = 128, height: int = 72, seed: int = 0
) -> Path:
    """A clip of scenes (flat colour, a square moving across) of 5-25 s each, written with PyAV: repeated frames for
    DINOv2 selection to drop, and scene changes for it to keep."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
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
    return Path(path)


# The demo's context: small enough that its 90-frame clip goes through selection and mixing (1024: STC).
DEMO_CONTEXT_LENGTH = 3500


def demo_model_and_processor(max_context_length: int = DEMO_CONTEXT_LENGTH):
    """The demo's tiny random model (real input geometry, `DEMO_CONTEXT_LENGTH`) and its processor, built offline;
    used by `longvu demo` and the web page's offline mode."""
    from .processing import LongVUProcessor, LongVUVideoProcessor

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, max_context_length=max_context_length)
    return model, LongVUProcessor(tokenizer, LongVUVideoProcessor())


def write_demo_clip(
    path: str | os.PathLike, seconds: int = 90, fps: int = 2, width: int = 128, height: int = 72
) -> Path:
    """The demo's clip: scenes of flat colour with a moving square (`write_scene_clip`, needs PyAV)."""
    return write_scene_clip(path, seconds=seconds, fps=fps, width=width, height=height)


__all__ = ["DEMO_CONTEXT_LENGTH", "demo_model_and_processor", "save_tiny_model", "tiny_config", "tiny_model",
           "tiny_tokenizer", "write_demo_clip", "write_scene_clip"]
