"""Everything that differs between the transformers releases longvu-hf supports, in one place.

The rest of the package is written against the newest release (5.24 renamed the key-value cache argument and output
field from `past_key_values` to `cache`); this module maps those names onto whatever release is installed, and refuses
a release outside the supported range at import with one line that names the range.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass

import transformers
from packaging.version import Version

MIN_TRANSFORMERS = "5.18.0"
MAX_TRANSFORMERS_EXCLUSIVE = "6"
SUPPORTED_TRANSFORMERS = f">={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS_EXCLUSIVE}"


def check_transformers_version(version: str | None = None) -> None:
    """Raise an `ImportError` naming the supported range when the installed transformers is outside it."""
    version = version or transformers.__version__
    parsed = Version(version)
    if not Version(MIN_TRANSFORMERS) <= Version(parsed.base_version) < Version(MAX_TRANSFORMERS_EXCLUSIVE):
        raise ImportError(
            f"longvu-hf supports transformers{SUPPORTED_TRANSFORMERS}, but transformers {version} is installed: "
            f'pip install "transformers{SUPPORTED_TRANSFORMERS}"'
        )


check_transformers_version()

import torch  # noqa: E402  (after the version check, so an unsupported release fails with the message above)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast  # noqa: E402

# The key-value cache: `cache` from 5.24 on (forward argument, output field, generation kwarg), `past_key_values` before.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
LEGACY_CACHE_NAMES = ("past_key_values", "cache_params")

try:  # transformers' multimodal output bases (image/video/audio encoder outputs beside the LLM's)
    from transformers.modeling_outputs import (  # noqa: E402
        MultimodalBaseModelOutputWithPast,
        MultimodalCausalLMOutputWithPast,
    )
except ImportError:  # older releases: the text outputs, plus the same encoder-output fields

    @dataclass
    class MultimodalBaseModelOutputWithPast(BaseModelOutputWithPast):
        """
        `BaseModelOutputWithPast` plus the encoders' outputs (as transformers' own class, which these releases lack).

        Args:
            image_outputs (`BaseModelOutputWithPooling`, *optional*):
                Output of the image encoder; `None` if no images were processed.
            video_outputs (`BaseModelOutputWithPooling`, *optional*):
                Output of the video encoder; `None` if no videos were processed.
            audio_outputs (`BaseModelOutputWithPooling`, *optional*):
                Output of the audio encoder; `None` if no audio was processed.
        """

        image_outputs: transformers.modeling_outputs.BaseModelOutputWithPooling | None = None
        video_outputs: transformers.modeling_outputs.BaseModelOutputWithPooling | None = None
        audio_outputs: transformers.modeling_outputs.BaseModelOutputWithPooling | None = None

    @dataclass
    class MultimodalCausalLMOutputWithPast(CausalLMOutputWithPast):
        """
        `CausalLMOutputWithPast` plus the encoders' outputs (as transformers' own class, which these releases lack).

        Args:
            loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):
                Language modeling loss (for next-token prediction).
            logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, config.vocab_size)`):
                Prediction scores of the language modeling head (scores for each vocabulary token before SoftMax).
            image_outputs (`BaseModelOutputWithPooling`, *optional*):
                Output of the image encoder; `None` if no images were processed.
            video_outputs (`BaseModelOutputWithPooling`, *optional*):
                Output of the video encoder; `None` if no videos were processed.
            audio_outputs (`BaseModelOutputWithPooling`, *optional*):
                Output of the audio encoder; `None` if no audio was processed.
        """

        image_outputs: transformers.modeling_outputs.BaseModelOutputWithPooling | None = None
        video_outputs: transformers.modeling_outputs.BaseModelOutputWithPooling | None = None
        audio_outputs: transformers.modeling_outputs.BaseModelOutputWithPooling | None = None


def cache_kwargs(cache) -> dict:
    """`{name: cache}` under the installed release's name, for calling a transformers model or building an output."""
    return {CACHE_NAME: cache}


def cache_of(output) -> object | None:
    """The cache held by a transformers output, whatever the installed release calls it."""
    return getattr(output, CACHE_NAME, None)


def accepts_cache_argument(forward):
    """Decorate a `forward(self, ..., cache=None, ...)` written with the newest name.

    On releases that call it `past_key_values`, the signature shown to transformers (generation inspects it) and to
    users says `past_key_values`; on every release, the other spellings are accepted as transformers' own models
    accept them (with a deprecation warning where the installed release has renamed them), and one value under two
    names is refused.
    """
    signature = inspect.signature(forward)
    if "cache" not in signature.parameters:
        raise TypeError(f"{forward.__qualname__} has no `cache` parameter")

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        for legacy in LEGACY_CACHE_NAMES:
            if legacy in kwargs:
                value = kwargs.pop(legacy)
                if CACHE_NAME == "cache":
                    warnings.warn(
                        f"`{legacy}` is deprecated for `{forward.__qualname__}`; use `cache` instead",
                        FutureWarning,
                        stacklevel=2,
                    )
                if kwargs.get("cache") is not None and value is not None:
                    raise ValueError(f"Pass the key-value cache once, as `{CACHE_NAME}`, not also as `{legacy}`")
                if value is not None or "cache" not in kwargs:
                    kwargs["cache"] = value
        return forward(self, *args, **kwargs)

    if CACHE_NAME != "cache":
        parameters = [p.replace(name=CACHE_NAME) if p.name == "cache" else p for p in signature.parameters.values()]
        wrapper.__signature__ = signature.replace(parameters=parameters)
    return wrapper


# Processor defaults: from 5.23 on, transformers reads them from the processor class's attributes
# (`text_kwargs = {...}`); earlier releases only from the processor's `ProcessingKwargs._defaults`.
PROCESSOR_CLASS_DEFAULTS = Version(Version(transformers.__version__).base_version) >= Version("5.23.0")
_MODALITY_KWARGS = ("text_kwargs", "images_kwargs", "videos_kwargs", "audio_kwargs")


def processor_defaults_for_installed_release(processor_class: type, kwargs_class: type) -> None:
    """On releases before 5.23, copy a processor class's modality defaults (`text_kwargs = {...}`, ...) into its
    `ProcessingKwargs` subclass's `_defaults`, the only place those releases read them; newer releases read the class
    attributes themselves and nothing is done."""
    if PROCESSOR_CLASS_DEFAULTS:
        return
    kwargs_class._defaults = {
        name: dict(getattr(processor_class, name))
        for name in _MODALITY_KWARGS
        if isinstance(getattr(processor_class, name, None), dict)
    }


def training_arguments_for_installed_release(values: dict) -> dict:
    """Training options written with the newest names (`activation_checkpointing`, 5.23 on), renamed to the installed
    release's (`gradient_checkpointing` before)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    renamed = dict(values)
    for new, old in (
        ("activation_checkpointing", "gradient_checkpointing"),
        ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"),
    ):
        if new in renamed and new not in fields and old in fields:
            renamed[old] = renamed.pop(new)
    return renamed


__all__ = [
    "CACHE_NAME",
    "MultimodalBaseModelOutputWithPast",
    "MultimodalCausalLMOutputWithPast",
    "SUPPORTED_TRANSFORMERS",
    "accepts_cache_argument",
    "cache_kwargs",
    "cache_of",
    "check_transformers_version",
    "processor_defaults_for_installed_release",
    "training_arguments_for_installed_release",
]
