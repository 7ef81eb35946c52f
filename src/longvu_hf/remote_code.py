"""Hub remote code for every folder LongVU writes: flat copies of the package's files and the `auto_map`s.

Hub remote code (`trust_remote_code=True`) imports the files next to the weights as one flat package: transformers
copies a module and every sibling it imports with `from .name import ...`, and nothing else. transformers' own
writer (`register_for_auto_class` + `custom_object_save`) copies files verbatim and only from the class's own folder,
which cannot work for this package: it keeps its code in subpackages (`modeling/`, `processing/`) that import
each other. So `LongVUConfig.save_pretrained` and the processors' `save_pretrained` call
`write_remote_code`, which writes flattened copies (each relative import pointed at the sibling file) and the
`auto_map`s: every folder that `save_pretrained` writes (the converter's, a fine-tuned model's, a Trainer checkpoint,
a merged LoRA) loads with `trust_remote_code=True` where longvu-hf is not installed. The copies are generated from
the running code, so they are always the same source as the package.

Example:

```python
>>> from longvu_hf.remote_code import write_remote_code
>>> write_remote_code("LongVU_Qwen2_7B-hf")  # done by save_pretrained already; shown for completeness
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

def _is_flat_copy() -> bool:
    """True when this module runs as Hub remote code (the flat copy), not from the installed package."""
    return not (PACKAGE_DIR / "modeling").is_dir()


# What a saved folder's `auto_map`s name (flat module . class), and the package file each class lives in. Written out
# rather than read from the classes: importing them here would tie this module into an import circle with the
# config and processors that call it (tests/test_hub_folders.py checks both tables against the classes).
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_longvu.LongVUConfig",
    "AutoModel": "modeling_longvu.LongVUModel",
    "AutoModelForImageTextToText": "modeling_longvu.LongVUForConditionalGeneration",
    "AutoModelForMultimodalLM": "modeling_longvu.LongVUForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {
    "AutoProcessor": "processing_longvu.LongVUProcessor",
    "AutoVideoProcessor": "video_processing_longvu.LongVUVideoProcessor",
}
AUTO_MAP_FILES = (
    "modeling/configuration_longvu.py",
    "modeling/modeling_longvu.py",
    "processing/processing_longvu.py",
    "processing/video_processing_longvu.py",
)


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
            f"# Generated from {PACKAGE_NAME}/{relative_file} by save_pretrained (longvu_hf.hub.write_remote_code) for\n"
            f"# Hub remote code; relative imports point at the sibling files of this folder. Edit the package, not this.\n"
        )
        source, needed = _rewrite_imports(relative_file, path.read_text(encoding="utf-8"))
        sources[flat_name], by_flat_name[flat_name] = header + source, relative_file
        pending.extend(needed)
    return sources


def _flat_sources() -> dict[str, str]:
    """Flat file name -> source of every remote-code file."""
    if _is_flat_copy():  # saving from remote code: this folder already holds the flat files
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(PACKAGE_DIR.glob("*.py")) if p.name != "__init__.py"}
    return remote_code_sources(sorted(AUTO_MAP_FILES))


def write_remote_code(folder: str | os.PathLike) -> list[str]:
    """Write the flat remote-code files into `folder` and the `auto_map`s into the configs found there:
    `config.json` (the model classes, and the processor classes when the folder has a processor: `AutoProcessor` and
    `AutoVideoProcessor` look there too), `processor_config.json` and `video_preprocessor_config.json`.
    `save_pretrained` of the config and of the processors calls this. Returns the file names written."""
    folder = Path(folder)
    sources = _flat_sources()
    for name, source in sources.items():
        (folder / name).write_text(source, encoding="utf-8")

    processor_file = folder / "processor_config.json"
    video_processor_file = folder / "video_preprocessor_config.json"
    has_processor = processor_file.is_file() or video_processor_file.is_file()
    if (folder / "config.json").is_file():
        auto_map = {**MODEL_AUTO_MAP, **(PROCESSOR_AUTO_MAP if has_processor else {})}
        _update_json(folder / "config.json", lambda data: data.update(auto_map=auto_map))
    if processor_file.is_file():

        def add_processor_maps(data: dict):
            data["auto_map"] = {"AutoProcessor": PROCESSOR_AUTO_MAP["AutoProcessor"]}
            if isinstance(data.get("video_processor"), dict):  # saved nested in processor_config.json
                data["video_processor"]["auto_map"] = {"AutoVideoProcessor": PROCESSOR_AUTO_MAP["AutoVideoProcessor"]}

        _update_json(processor_file, add_processor_maps)
    if video_processor_file.is_file():
        _update_json(
            video_processor_file,
            lambda data: data.update(auto_map={"AutoVideoProcessor": PROCESSOR_AUTO_MAP["AutoVideoProcessor"]}),
        )
    return list(sources)


def _update_json(path: Path, update) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    update(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


_PUSH_ARGUMENTS = ("repo_id", "commit_message", "private", "token", "create_pr", "revision")


def _file_times(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}


def save_with_remote_code(save, save_directory: str | os.PathLike, push_to_hub: bool, kwargs: dict):
    """Run a transformers `save_pretrained` (`save`, without its own upload), write the remote code and `auto_map`s
    next to what it saved, then, with `push_to_hub`, upload the files this call wrote (as transformers does)."""
    folder = Path(save_directory)
    push_kwargs = {name: kwargs.pop(name) for name in _PUSH_ARGUMENTS if name in kwargs} if push_to_hub else {}
    before = _file_times(folder)
    result = save(save_directory, **kwargs)
    write_remote_code(folder)
    if push_to_hub:
        from huggingface_hub import HfApi

        changed = [name for name, mtime in _file_times(folder).items() if before.get(name) != mtime]
        api = HfApi(token=push_kwargs.get("token"))
        repo_id = api.create_repo(
            push_kwargs.get("repo_id", folder.name), exist_ok=True, private=push_kwargs.get("private")
        ).repo_id
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            allow_patterns=changed,
            commit_message=push_kwargs.get("commit_message") or "Upload LongVU",
            create_pr=push_kwargs.get("create_pr", False),
            revision=push_kwargs.get("revision"),
        )
    return result
