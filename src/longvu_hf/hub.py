"""Make a converted LongVU folder Hub-ready: flat remote-code copies of the package, `auto_map`s, model card, upload.

Hub remote code (`trust_remote_code=True`) imports the files next to the weights as one flat package: transformers
copies a module and every sibling it imports with `from .name import ...`, and nothing else. The package keeps its
code in subpackages (`modeling/`, `processing/`) that import `..configuration_longvu`, so `write_remote_code` writes
flattened copies with each relative import pointed at the sibling file. The copies are generated from the installed
package at conversion time, so they are always the same source as the package.

Example:

```python
>>> from longvu_hf.hub import write_remote_code
>>> write_remote_code("LongVU_Qwen2_7B-hf")
['configuration_longvu.py', 'modeling_longvu.py', 'aggregator.py', 'compression.py', ...]
```
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_NAME = "longvu_hf"

def _source_of(cls) -> tuple[str, str]:
    """(package-relative file, class name) of one of the package's classes."""
    return cls.__module__.removeprefix(PACKAGE_NAME + ".").replace(".", "/") + ".py", cls.__name__


def auto_map_sources(with_processor: bool) -> dict[str, tuple[str, str]]:
    """The auto classes a converted folder declares, each as (package-relative file, class name). Read from the
    classes themselves, so a file moved inside the package needs no change here."""
    from .configuration_longvu import LongVUConfig
    from .modeling import LongVUForConditionalGeneration, LongVUModel

    entries = {
        "AutoConfig": _source_of(LongVUConfig),
        "AutoModel": _source_of(LongVUModel),
        "AutoModelForImageTextToText": _source_of(LongVUForConditionalGeneration),
        "AutoModelForMultimodalLM": _source_of(LongVUForConditionalGeneration),
    }
    if with_processor:
        from .processing import LongVUProcessor, LongVUVideoProcessor

        entries["AutoProcessor"] = _source_of(LongVUProcessor)
        entries["AutoVideoProcessor"] = _source_of(LongVUVideoProcessor)
    return entries


def _flat_reference(relative_file: str, class_name: str) -> str:
    return f"{Path(relative_file).stem}.{class_name}"


class RemoteCodeError(RuntimeError):
    """The package's imports cannot be flattened into Hub remote code (a packaging bug, not a user error)."""


def _module_file(package_parts: tuple[str, ...], module: str | None, level: int, importer: str) -> str:
    """Package-relative path of the module a relative import names."""
    if level > len(package_parts) + 1:
        raise RemoteCodeError(f"{importer}: relative import beyond the package root")
    base = package_parts[: len(package_parts) - (level - 1)]
    parts = base + tuple(module.split(".") if module else ())
    return "/".join(parts) + ".py"


def _rewrite_imports(relative_file: str, source: str) -> tuple[str, list[str]]:
    """Point every relative import of one package file at its flat sibling; returns the new source and the package
    files it imports."""
    package_parts = tuple(Path(relative_file).parent.parts)
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    replacements, needed = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE_NAME:
                    raise RemoteCodeError(f"{relative_file}: absolute import of {alias.name} cannot run as remote code")
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if node.module and node.module.split(".")[0] == PACKAGE_NAME:
                raise RemoteCodeError(f"{relative_file}: absolute import from {node.module} cannot run as remote code")
            continue
        indent = lines[node.lineno - 1][: len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())]
        names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
        if node.module is not None:
            target = _module_file(package_parts, node.module, node.level, relative_file)
            needed.append(target)
            new = f"{indent}from .{Path(target).stem} import {names}\n"
        else:
            # `from . import x as y`: valid in the flat package, but transformers only discovers (and copies)
            # siblings named in `from .x import ...`, so each one is also imported that way.
            new_lines = []
            for alias in node.names:
                target = _module_file(package_parts, alias.name, node.level, relative_file)
                needed.append(target)
                stem = Path(target).stem
                new_lines.append(f"{indent}from .{stem} import __name__ as _{stem}_module  # lists {stem}.py\n")
            new_lines.append(f"{indent}from . import {names}\n")
            new = "".join(new_lines)
        replacements[node.lineno] = (node.end_lineno, new)
    out, line_no = [], 1
    while line_no <= len(lines):
        if line_no in replacements:
            end, new = replacements[line_no]
            out.append(new)
            line_no = end + 1
        else:
            out.append(lines[line_no - 1])
            line_no += 1
    return "".join(out), needed


def remote_code_sources(entry_files: list[str]) -> dict[str, str]:
    """Flat file name -> rewritten source, for the entry files and every package file they import (transitively)."""
    sources, by_flat_name, pending = {}, {}, list(entry_files)
    while pending:
        relative_file = pending.pop(0)
        flat_name = Path(relative_file).name
        if flat_name in sources:
            if by_flat_name[flat_name] != relative_file:
                other = by_flat_name[flat_name]
                raise RemoteCodeError(f"{relative_file} and {other} would share the flat name {flat_name}")
            continue
        path = PACKAGE_DIR / relative_file
        if not path.is_file():
            raise RemoteCodeError(f"{relative_file} is not a file of the {PACKAGE_NAME} package")
        header = (
            f"# Generated from {PACKAGE_NAME}/{relative_file} by longvu_hf.convert_longvu_weights_to_hf for Hub\n"
            f"# remote code; relative imports point at the sibling files of this folder. Edit the package, not this.\n"
        )
        source, needed = _rewrite_imports(relative_file, path.read_text(encoding="utf-8"))
        sources[flat_name], by_flat_name[flat_name] = header + source, relative_file
        pending.extend(needed)
    return sources


def write_remote_code(folder: str | os.PathLike, with_processor: bool = True) -> list[str]:
    """Write the flat remote-code files into `folder` and add the `auto_map`s to `config.json` (every auto class:
    `AutoProcessor` and `AutoVideoProcessor` look there too) and, with a processor, `processor_config.json`.
    Returns the file names written."""
    folder = Path(folder)
    entries = auto_map_sources(with_processor)
    sources = remote_code_sources(sorted({where[0] for where in entries.values()}))
    for name, source in sources.items():
        (folder / name).write_text(source, encoding="utf-8")

    auto_map = {auto: _flat_reference(*where) for auto, where in entries.items()}
    _update_json(folder / "config.json", lambda data: data.update(auto_map=auto_map))
    if with_processor:

        def add_processor_maps(data: dict):
            data["auto_map"] = {"AutoProcessor": auto_map["AutoProcessor"]}
            if isinstance(data.get("video_processor"), dict):  # saved nested in processor_config.json
                data["video_processor"]["auto_map"] = {"AutoVideoProcessor": auto_map["AutoVideoProcessor"]}

        _update_json(folder / "processor_config.json", add_processor_maps)
    return list(sources)


def _update_json(path: Path, update) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    update(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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

# Reported results (paper main table / official model card; EVALUATION.md). VideoMME is without subtitles.
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
        pipeline_tag="video-text-to-text" if checkpoint_kind == "video" else "image-text-to-text",
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


def write_model_card(folder: str | os.PathLike, config, **card_kwargs) -> Path:
    """Render the model card into `folder/README.md`; see `render_model_card` for the arguments."""
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(config, **card_kwargs), encoding="utf-8")
    return path
