"""Publish a LongVU folder: the model card and the upload. (The remote code and `auto_map`s that make a folder load
without longvu-hf are written by `save_pretrained` itself: see `remote_code.py`.)"""

from __future__ import annotations

import os
from pathlib import Path

from .remote_code import PACKAGE_DIR, write_remote_code  # noqa: F401  (re-exported: the converter's entry point)


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Create `repo_id` on the Hub if needed and upload `folder`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload LongVU (longvu-hf)")
    return str(getattr(commit, "commit_url", commit))


# -------------------------------------------------------------------------------------------------------------------
# Model card
# -------------------------------------------------------------------------------------------------------------------

# The card template lives at the repository root (`model_card.md`); the package reaches it through a symlink so the
# converter also finds it when installed.
MODEL_CARD_TEMPLATE = PACKAGE_DIR / "model_card.md"

# Reported results (paper main table / official model card; docs/evaluation.md). VideoMME is without subtitles.
PAPER_RESULTS = {
    "LongVU_Qwen2_7B": {"EgoSchema": 67.6, "MVBench": 66.9, "VideoMME": 60.6, "VideoMME (long)": 59.5, "MLVU": 65.4},
    "LongVU_Llama3_2_3B": {"EgoSchema": 59.1, "MVBench": 60.9, "VideoMME": 51.5, "VideoMME (long)": 47.2, "MLVU": 55.9},
}
_RESULT_DATASETS = {  # name -> (dataset type, dataset config, display name)
    "EgoSchema": ("egoschema", None, "EgoSchema (500-question subset)"),
    "MVBench": ("mvbench", None, "MVBench (mean over 20 tasks)"),
    "VideoMME": ("videomme", "overall", "VideoMME overall, without subtitles"),
    "VideoMME (long)": ("videomme", "long", "VideoMME long videos, without subtitles"),
    "MLVU": ("mlvu", "dev", "MLVU dev, M-avg"),
}
_LLM_NAMES = {
    "Qwen2_7B": "Qwen2-7B-Instruct",
    "Llama3_2_3B": "Llama-3.2-3B-Instruct",
    "Llama3_2_1B": "Llama-3.2-1B-Instruct",
}
PAPER_URL = "https://arxiv.org/abs/2410.17434"


def card_pipeline_tag(checkpoint_kind: str) -> str:
    """The card's `pipeline_tag`: a task transformers has a pipeline for, so that `pipeline(model=repo_id)` (which
    reads the tag from the Hub) works. Videos go through `any-to-any` (transformers has no `video-text-to-text`
    pipeline; `image-text-to-text` takes no videos); image checkpoints through `image-text-to-text`."""
    return "any-to-any" if checkpoint_kind == "video" else "image-text-to-text"


def _llm_name(config, release: str | None) -> str:
    for key, name in _LLM_NAMES.items():
        if release and key in release:
            return name
    text = config.text_config
    family = {"qwen2": "Qwen2", "llama": "Llama"}.get(text.model_type, text.model_type)
    return f"{family} ({text.num_hidden_layers} layers, hidden size {text.hidden_size})"


def _public_source(value: str) -> str:
    """Hub ids as given; local folders by their name only (a card must not leak the converting machine's paths)."""
    path = Path(value).expanduser()
    return path.name + "/" if path.exists() else value


def render_model_card(
    config,
    *,
    model_name: str,
    repo_id: str | None = None,
    release: str | None = None,
    base_model: str | None = None,
    dtype: str = "bfloat16",
    base_vocab: int | None = None,
    num_suppressed: int = 0,
    sources: dict[str, str] | None = None,
    output_name: str | None = None,
    with_processor: bool = True,
    repetition_penalty: float | None = None,
) -> str:
    """The filled model card (README.md) of a converted folder, from the `model_card.md` template."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from . import __version__

    sources = {k: _public_source(v) for k, v in (sources or {}).items()}
    checkpoint_kind = "video" if config.highres or config.num_queries < config.encoder_grid_size**2 else "image"
    llm_name = _llm_name(config, release)
    results = [
        {"name": _RESULT_DATASETS[name][2], "value": value}
        for name, value in PAPER_RESULTS.get(release, {}).items()
    ]
    eval_results = [
        EvalResult(
            task_type="video-text-to-text",
            dataset_type=_RESULT_DATASETS[name][0],
            dataset_name=_RESULT_DATASETS[name][2],
            dataset_config=_RESULT_DATASETS[name][1],
            metric_type="accuracy",
            metric_value=value,
            source_name="LongVU paper (arXiv 2410.17434)",
            source_url=PAPER_URL,
        )
        for name, value in PAPER_RESULTS.get(release, {}).items()
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=card_pipeline_tag(checkpoint_kind),
        license="apache-2.0",
        language=["en"],
        base_model=base_model,
        tags=["longvu", "multimodal"]
        + (["video", "long-video", "video-text-to-text"] if checkpoint_kind == "video" else ["image-text-to-text"]),
        model_name=model_name,
        eval_results=eval_results or None,
        base_model_relation="finetune" if base_model else None,
    )
    command = (
        "python -m longvu_hf.convert_longvu_weights_to_hf"
        f" --checkpoint {sources.get('checkpoint', '...')} --siglip {sources.get('siglip', '...')}"
        f" --dino {sources.get('dino', '...')} --output {output_name or model_name} --dtype {dtype}"
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=model_name,  # (ModelCardData moves it into model-index when there are results)
        repo_id=repo_id or f"path/to/{output_name or model_name}",
        release=release,
        llm_name=llm_name,
        checkpoint_kind=checkpoint_kind,
        config=config,
        dtype=dtype,
        tied=bool(config.tie_word_embeddings),
        vocab_size=config.text_config.vocab_size,
        base_vocab=base_vocab,
        num_suppressed=num_suppressed,
        sources=sources,
        command=command,
        results=results,
        with_processor=with_processor,
        repetition_penalty=repetition_penalty,
        package_version=__version__,
    )
    return str(card)


def write_adapter_card(folder: str | os.PathLike) -> Path:
    """Set the front matter of a LoRA adapter folder's card (peft writes `text-generation`): library `peft`, the
    pipeline tag of a LongVU video model, the base model when it is a Hub id, LongVU's tags."""
    import json

    from huggingface_hub import ModelCard

    folder = Path(folder)
    path = folder / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\n---\n")
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    card.data.library_name = "peft"
    card.data.pipeline_tag = card_pipeline_tag("video")
    card.data.base_model = base if base and not Path(base).expanduser().exists() else None
    card.data.tags = sorted(set(card.data.tags or []) | {"longvu", "lora", "video-text-to-text"})
    card.save(path)
    return path


def write_model_card(folder: str | os.PathLike, config, **card_kwargs) -> Path:
    """Render the model card into `folder/README.md`; see `render_model_card` for the arguments."""
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(config, **card_kwargs), encoding="utf-8")
    return path
