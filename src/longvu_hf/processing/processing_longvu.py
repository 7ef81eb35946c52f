# Copyright 2026 The LongVU-HF Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""LongVU processor: tokenizer + video processor, one placeholder token per video or image, and chat templates."""

from typing import Any

from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ImagesKwargs, ProcessingKwargs, ProcessorMixin
from transformers.utils import auto_docstring
from transformers.video_utils import make_batched_videos

from ..transformers_compat import processor_defaults_for_installed_release
from .video_processing_longvu import LongVUVideoProcessor, LongVUVideoProcessorKwargs

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
CHAT_TEMPLATE_BACKBONES = ("qwen2", "llama3")

# Both templates put every video/image placeholder of a message first, each followed by "\n", then the text: this is
# the reference's `"<image>\n" + question` (docs/reference.md §6.1) whatever the order of the blocks. Assistant turns are
# wrapped in {% generation %} so that `return_assistant_tokens_mask=True` marks what training should learn.
_RENDER_CONTENT_MACRO = """{%- macro render_content(content) -%}
{%- if content is string -%}{{- content -}}
{%- else -%}
{%- for block in content -%}
{%- if block['type'] == 'video' -%}{{- video_token + '\\n' -}}
{%- elif block['type'] == 'image' -%}{{- image_token + '\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- for block in content -%}
{%- if block['type'] == 'text' -%}{{- block['text'] -}}{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
"""

_QWEN2_BODY = """{%- if messages[0]['role'] != 'system' -%}
{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'assistant' -%}
{{- '<|im_start|>assistant\\n' -}}{% generation %}{{- render_content(message['content']) + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}
{%- else -%}
{{- '<|im_start|>' + message['role'] + '\\n' + render_content(message['content']) + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

# The template LongVU's Llama-3.2 checkpoints were trained with (`preprocess_llama3`): no "Cutting Knowledge Date"
# header, contents trimmed.
_LLAMA3_BODY = """{{- '<|begin_of_text|>' -}}
{%- if messages[0]['role'] != 'system' -%}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + default_system + '<|eot_id|>' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'assistant' -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{% generation %}{{- render_content(message['content']) | trim + '<|eot_id|>' -}}{% endgeneration %}
{%- else -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + render_content(message['content']) | trim + '<|eot_id|>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{%- endif -%}
"""


def _jinja_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def get_chat_template(
    backbone: str,
    video_token: str = "<video>",
    image_token: str = "<image>",
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> str:
    """The chat template of a released LongVU backbone: `"qwen2"` (ChatML) or `"llama3"` (the training template).

    The placeholder tokens are written into the template, so a saved `chat_template.jinja` renders them by itself.

    Example:

    ```python
    >>> from jinja2 import Template
    >>> template = get_chat_template("qwen2")
    >>> messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    >>> print(processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=True))
    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    <video>
    What happens?<|im_end|>
    <|im_start|>assistant
    <BLANKLINE>
    ```
    """
    bodies = {"qwen2": _QWEN2_BODY, "llama3": _LLAMA3_BODY}
    if backbone not in bodies:
        raise ValueError(f"`backbone` must be one of {CHAT_TEMPLATE_BACKBONES}, got {backbone!r}")
    header = (
        f"{{%- set video_token = {_jinja_string(video_token)} -%}}\n"
        f"{{%- set image_token = {_jinja_string(image_token)} -%}}\n"
        f"{{%- set default_system = {_jinja_string(system_prompt)} -%}}\n"
    )
    return header + _RENDER_CONTENT_MACRO + bodies[backbone]


def _is_empty_list(value: Any) -> bool:
    """[] / [[]] / [[], []]: lists holding nothing at any depth."""
    return isinstance(value, (list, tuple)) and all(_is_empty_list(item) for item in value)


class LongVUProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: LongVUVideoProcessorKwargs


class _ImagesThroughVideoProcessor:
    """Routes the `images=` of `ProcessorMixin.__call__` to `LongVUVideoProcessor.preprocess_images`.

    LongVU preprocesses a still image like a one-frame video, so the processor has no separate image processor to
    save; this view only gives the standard processor machinery the interface it expects.
    """

    valid_kwargs = ImagesKwargs

    def __init__(self, video_processor: LongVUVideoProcessor):
        self.video_processor = video_processor
        self.model_input_names = list(video_processor.image_input_names)

    def __call__(self, images: Any, **kwargs):
        return self.video_processor.preprocess_images(images, **kwargs)

    def fetch_images(self, images: Any):
        return self.video_processor.fetch_images(images)


@auto_docstring(
    custom_intro="""
    Processor of LongVU: a tokenizer and a `LongVUVideoProcessor`.

    Each video (or image) is written in the text as ONE placeholder token (`video_token`, default `"<video>"`;
    `image_token`, default `"<image>"`, or the tokenizer's own `video_token`/`image_token`); the model replaces it by
    however many visual tokens its compression keeps. Missing placeholders are added to the tokenizer as special tokens,
    so that decoding with `skip_special_tokens=True` drops them.

    `processor(text=..., videos=..., images=...)` returns `input_ids`, `attention_mask`, and the video processor's
    outputs (`pixel_values_videos`, `pixel_values_videos_dino`, `video_num_frames`, `video_sizes`; for images
    `pixel_values`, `pixel_values_dino`, `image_sizes`). Sampling options (`fps`, `num_frames`, `max_frames`,
    `start_time`, `end_time`, ...) are passed along to the video processor. Batches are padded on the left, as
    generation needs (pass `padding_side="right"`, or a tokenizer created with it, to change that).

    The chat templates of both released backbones are available as `LongVUProcessor.QWEN_CHAT_TEMPLATE`,
    `LongVUProcessor.LLAMA3_CHAT_TEMPLATE` and `get_chat_template(backbone, video_token, image_token)`. When no
    template is given, the Llama-3 one is used for tokenizers whose BOS is `<|begin_of_text|>`, the Qwen2 one otherwise.

    Example:

    ```python
    >>> processor = LongVUProcessor(tokenizer, LongVUVideoProcessor())
    >>> messages = [{"role": "user", "content": [
    ...     {"type": "video", "path": "clip.mp4"}, {"type": "text", "text": "What happens?"}]}]
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
    ...                                        return_dict=True, return_tensors="pt", processor_kwargs={"fps": 1})
    >>> sorted(inputs.keys())  # doctest: +NORMALIZE_WHITESPACE
    ['attention_mask', 'input_ids', 'pixel_values_videos', 'pixel_values_videos_dino',
     'video_num_frames', 'video_sizes']
    >>> generated = model.generate(**inputs, max_new_tokens=32)
    >>> answer = processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])[0]
    ```
    """
)
class LongVUProcessor(ProcessorMixin):
    QWEN_CHAT_TEMPLATE = get_chat_template("qwen2")
    LLAMA3_CHAT_TEMPLATE = get_chat_template("llama3")
    get_chat_template = staticmethod(get_chat_template)
    valid_processor_kwargs = LongVUProcessorKwargs
    # Batches are padded on the left, as generation needs, unless the tokenizer was configured otherwise.
    text_kwargs = {"padding_side": "left"}

    def __init__(
        self,
        tokenizer=None,
        video_processor=None,
        chat_template: str | None = None,
        video_token: str = "<video>",
        image_token: str = "<image>",
        **kwargs,
    ):
        r"""
        video_token (`str`, *optional*, defaults to `"<video>"`):
            The placeholder written once per video (the tokenizer's own `video_token` when it has one).
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The placeholder written once per image (the tokenizer's own `image_token` when it has one).
        """
        if tokenizer is None:
            raise ValueError("LongVUProcessor needs a tokenizer.")
        if video_processor is None:
            video_processor = LongVUVideoProcessor()
        self.video_token = self._tokenizer_token(tokenizer, "video_token") or video_token
        self.image_token = self._tokenizer_token(tokenizer, "image_token") or image_token
        self._ensure_special_tokens(tokenizer, [self.video_token, self.image_token])
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if chat_template is None:
            backbone = "llama3" if tokenizer.bos_token == "<|begin_of_text|>" else "qwen2"
            chat_template = get_chat_template(backbone, self.video_token, self.image_token)
        super().__init__(tokenizer, video_processor, chat_template=chat_template, **kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """transformers' `save_pretrained`, plus the flat remote code and `auto_map`s that let the folder load with
        `trust_remote_code=True` where longvu-hf is not installed (`remote_code.py`)."""
        from ..remote_code import save_with_remote_code

        return save_with_remote_code(super().save_pretrained, save_directory, push_to_hub, kwargs)

    @staticmethod
    def _tokenizer_token(tokenizer, name: str) -> str | None:
        try:
            value = getattr(tokenizer, name, None)
        except (AttributeError, KeyError):
            return None
        return str(value) if value else None

    @staticmethod
    def _ensure_special_tokens(tokenizer, tokens: list[str]) -> None:
        """Adds the placeholders as special tokens if the tokenizer lacks them (or has them as ordinary words)."""
        special = set(tokenizer.all_special_tokens)
        missing = [token for token in tokens if token not in special]
        if missing:
            tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)

    @auto_docstring(
        custom_intro="""
        Tokenizes `text` (one placeholder per video or image, which the model expands) and preprocesses `videos` and
        `images` with the video processor; sampling options (`fps`, `num_frames`, `max_frames`, `start_time`,
        `end_time`, ...) go to the video processor.
        """
    )
    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        r"""
        images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*):
            Still images, each preprocessed like a one-frame video (`LongVUVideoProcessor.preprocess_images`).
        text (`str` or `list[str]`, *optional*):
            The prompts, with one placeholder (`video_token`, `image_token`) per video and per image.
        videos (`str`, `os.PathLike`, `np.ndarray`, `torch.Tensor`, frames, or a list of them, *optional*):
            Videos: files, URLs, folders or lists of frame images, decoded frames (see `LongVUVideoProcessor`).
        audio (`None`, *optional*):
            LongVU takes no audio (an empty `audios` list, as harnesses written for transformers 4.x pass, is ignored).
        """
        # Harnesses written for transformers 4.x (lmms-eval) always pass `audios=[]`, which the base class rejects as
        # a deprecated name. An empty or None `audios` means "no audio", like `audio`, which a processor without an
        # audio processor ignores (transformers' video processors do the same); a non-empty one keeps the base error.
        if "audios" in kwargs and (kwargs["audios"] is None or _is_empty_list(kwargs["audios"])):
            kwargs.pop("audios")
        return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        # Callers such as lmms-eval pass `images=[]` next to videos: an empty (or empty nested) list means "none".
        images = None if _is_empty_list(images) else images
        videos = None if _is_empty_list(videos) else videos
        return super().prepare_inputs_layout(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
        # transformers < 5.23 does not check the placeholder counts itself: one placeholder per video/image.
        if text is None:
            return
        texts = [text] if isinstance(text, str) else text
        for token, media, name, flatten in (
            (self.video_token, videos, "videos", make_batched_videos),
            (self.image_token, images, "images", make_flat_list_of_images),
        ):
            in_text = sum(sample.count(token) for sample in texts)
            given = 0 if media is None else len(flatten(media))
            if in_text and not given:
                raise ValueError(f"Found {in_text} {token} placeholder(s) in the text but no {name} were passed.")
            if in_text != given:
                raise ValueError(
                    f"The prompts hold {in_text} {token} placeholder(s) but {given} {name} were passed: write exactly "
                    f"one {token} per item."
                )

    @property
    def image_processor(self) -> _ImagesThroughVideoProcessor:
        """Images go through the video processor (`preprocess_images`); there is no separate image processor."""
        return _ImagesThroughVideoProcessor(self.video_processor)

    @property
    def model_input_names(self) -> list[str]:
        names = list(self.tokenizer.model_input_names) + list(self.video_processor.model_input_names)
        return names + list(self.video_processor.image_input_names)

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        # One placeholder per video: the model expands it to the compressed length (see `LongVUModel.expand_inputs`).
        return self.video_token

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens: bool = True, prompt_input_ids=None, **kwargs
    ) -> list[str]:
        """Decodes generated token ids (a batch or a single sequence) to a list of strings.

        `prompt_input_ids` (the processor's `input_ids`), if given, drops the decoded prompt from the front of each
        decoded sequence: `generate` returns the prompt as given (one placeholder per video) followed by the new
        tokens, as transformers' models do (so `generated[:, len(prompt):]` is the answer too).

        Example:

        ```python
        >>> generated = model.generate(**inputs, max_new_tokens=16)
        >>> processor.post_process_image_text_to_text(generated, prompt_input_ids=inputs["input_ids"])
        [' A red square moves to the right.']
        ```
        """
        texts = self.tokenizer.batch_decode(
            self._as_batch(generated_outputs), skip_special_tokens=skip_special_tokens, **kwargs
        )
        if prompt_input_ids is None:
            return texts
        prompts = self.tokenizer.batch_decode(
            self._as_batch(prompt_input_ids), skip_special_tokens=skip_special_tokens, **kwargs
        )
        return [text[len(prompt) :] if text.startswith(prompt) else text for text, prompt in zip(texts, prompts)]

    @staticmethod
    def _as_batch(token_ids):
        if hasattr(token_ids, "dim") and token_ids.dim() == 1:
            return token_ids.unsqueeze(0)
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0], int):
            return [token_ids]
        return token_ids


# The class attribute `text_kwargs` is the one definition of the processor's defaults (left padding); releases before
# transformers 5.23 read defaults only from `LongVUProcessorKwargs._defaults`, so they get a copy there.
processor_defaults_for_installed_release(LongVUProcessor, LongVUProcessorKwargs)

__all__ = ["LongVUProcessor", "LongVUProcessorKwargs", "get_chat_template"]
