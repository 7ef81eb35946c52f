"""Convert an official LongVU checkpoint (+ the SigLIP and DINOv2 towers) into a Hub-ready transformers folder.

    python -m longvu_hf.convert_longvu_weights_to_hf --checkpoint Vision-CAIR/LongVU_Qwen2_7B \\
        --siglip google/siglip-so400m-patch14-384 --dino facebook/dinov2-giant --output LongVU_Qwen2_7B-hf

Each of `--checkpoint`, `--siglip` and `--dino` is a local folder or a Hub id (downloaded with
`huggingface_hub.snapshot_download`). The official checkpoints (`Vision-CAIR/LongVU_*`, docs/reference.md §8) hold the LLM,
the Spatial Vision Aggregator and the projector under their original key names, but not the two frozen vision towers,
which are merged in from their own checkpoints (SigLIP's MAP head and text tower are dropped). Every tensor is renamed
into a freshly built `LongVUForConditionalGeneration` and written with `save_pretrained` (never hand-written keys); an
unmapped, missing or mis-shaped key stops the conversion.

The output folder holds sharded safetensors, `config.json` (the original multimodal settings carried over: thresholds,
token budget, query count), `generation_config.json` (the authors' greedy decoding), the tokenizer and processor when
the checkpoint ships a tokenizer, flat copies of the package's code with an `auto_map` (so `trust_remote_code=True`
works without `longvu_hf` installed), and a model card (`README.md`).

Vocabulary. The processor's placeholder tokens (`<video>`, `<image>`) are added to the checkpoint's tokenizer. The Qwen2
release stores 152064 embedding rows while its tokenizer has 151646 tokens, and the official loader shrinks the
embeddings to the tokenizer (`resize_token_embeddings`); here the 152064 rows are kept (the LLM keeps the stock
Qwen2-7B shape and the placeholders, 151646 and 151647, fall inside it). Llama-3.2 uses all its 128256 rows, so two
rows are appended for the placeholders. Either way `generation_config.suppress_tokens` lists every id the official
model cannot produce (ids from the tokenizer's original size on, placeholders included), so greedy decoding picks the
official loader's tokens. Llama files store `lm_head` explicitly: it is tied to the embeddings only when both are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, Dinov2Model, GenerationConfig, SiglipModel, SiglipVisionModel
from transformers.models.auto import CONFIG_MAPPING

from .configuration_longvu import LongVUConfig
from .modeling import LongVUForConditionalGeneration
from .modeling.video_encoder import module_key

try:
    from transformers.initialization import no_init_weights
except ImportError:  # where older 5.x releases keep it
    from transformers.modeling_utils import no_init_weights

# The six official releases (docs/reference.md §8.1): a `--checkpoint` named like one of them gets it as `base_model`.
OFFICIAL_RELEASES = (
    "LongVU_Qwen2_7B",
    "LongVU_Qwen2_7B_img",
    "LongVU_Llama3_2_3B",
    "LongVU_Llama3_2_3B_img",
    "LongVU_Llama3_2_1B",
    "LongVU_Llama3_2_1B_img",
)
SIGLIP_HUB_ID = "google/siglip-so400m-patch14-384"
DINO_HUB_ID = "facebook/dinov2-giant"

# Keys of the official config.json that describe the multimodal part or training, not the LLM.
_MULTIMODAL_KEYS = {
    "connect_layer", "connector_depth", "connector_only", "dino_threshold", "drop_threshold", "frame_pos",
    "freeze_mm_mlp_adapter", "highres", "highres_connect", "image_aspect_ratio", "image_position", "image_token_len",
    "is_image_newline", "is_st_sampler", "lowres_token", "mm_patch_merge_type", "mm_projector_lr",
    "mm_projector_type", "mm_use_im_patch_token", "mm_use_im_start_end", "mm_vision_sampler_lr",
    "mm_vision_select_feature", "mm_vision_select_layer", "mm_vision_tower_aux_list",
    "mm_vision_tower_aux_token_len_list", "mm_vision_tower_lr", "num_of_vision_sampler_layers", "num_query_group",
    "query_num_list", "spmd_debug", "spmd_fsdp_sharding", "start_of_vision_sampler_layers",
    "stride_of_vision_sampler_layers", "tokenizer_model_max_length", "tokenizer_padding_side", "tune_mm_mlp_adapter",
    "unfreeze_mm_vision_tower", "use_mm_proj", "vision_hidden_size", "vision_tower_aux_token_len_list",
    "inference_max_length", "max_sequence_length", "mm_hidden_size", "mm_vision_tower",
    # bookkeeping, not settings
    "architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype", "model_type", "auto_map",
}

# (original regex, native replacement), tried in order on each key of the official checkpoint (docs/reference.md §8.3-8.4).
_SVA_LAYER, _AGGREGATOR_LAYER = r"^model\.vision_sampler_0\.layers\.(\d+)\.", r"model.vision_aggregator.layers.\1."
KEY_RENAMES: list[tuple[str, str]] = [
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.mm_projector_aux_(\d+)\.0\.", r"model.vision_aggregator.encoder_projections.\1.linear_1."),
    (r"^model\.mm_projector_aux_(\d+)\.2\.", r"model.vision_aggregator.encoder_projections.\1.linear_2."),
    (r"^model\.mm_projector_aux_(\d+)\.3\.", r"model.vision_aggregator.encoder_projections.\1.layer_norm."),
    (r"^model\.vision_query$", "model.vision_aggregator.query"),
    (r"^model\.image_newline$", "model.image_newline"),
    (_SVA_LAYER + r"pos_embed_(\d+)$", _AGGREGATOR_LAYER + r"pos_embeds.\2"),
    (_SVA_LAYER + r"cross_attn\.q_proj\.0\.", _AGGREGATOR_LAYER + "cross_attn.q_norm."),
    (_SVA_LAYER + r"cross_attn\.q_proj\.1\.", _AGGREGATOR_LAYER + "cross_attn.q_proj."),
    (_SVA_LAYER + r"cross_attn\.([kv])_proj_(\d+)\.0\.", _AGGREGATOR_LAYER + r"cross_attn.\2_norms.\3."),
    (_SVA_LAYER + r"cross_attn\.([kv])_proj_(\d+)\.1\.", _AGGREGATOR_LAYER + r"cross_attn.\2_projs.\3."),
    (_SVA_LAYER + r"(proj_context|proj_in|proj_out|norm|cross_attn\.o_proj)\.", _AGGREGATOR_LAYER + r"\2."),
    (r"^lm_head\.weight$", "lm_head.weight"),
]

# Files fetched from the Hub besides the weights: configs and tokenizer files (never code).
_CHECKPOINT_FILES = ["*.json", "*.txt", "*.model", "*.jinja"]
_TOWER_FILES = ["config.json", "preprocessor_config.json"]
_WEIGHT_FILE_PATTERN = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


# -------------------------------------------------------------------------------------------------------------------
# Reading the inputs
# -------------------------------------------------------------------------------------------------------------------


def resolve_source(
    value: str | os.PathLike, argument: str, allow_patterns: list[str] | None = None, weights: bool = True
) -> Path:
    """A local folder as is; anything else is taken as a Hub id and downloaded with `snapshot_download` (the files
    matching `allow_patterns`, plus the weights when `weights`: safetensors if the repository has them, else .bin).

    Raises `FileNotFoundError` naming `argument` when the folder does not exist and the Hub cannot provide it
    (no network, `HF_HUB_OFFLINE=1` without a cached copy, unknown repository).
    """
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{argument} {value}: expected a folder (or a Hub id), got a file")
    text = str(value)
    looks_like_repo_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) is not None and not text.startswith((".", "~"))
    if not looks_like_repo_id:
        raise FileNotFoundError(f"{argument} {value}: no such folder")
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns or [])
    try:
        if not weights:
            return Path(snapshot_download(text, allow_patterns=patterns))
        # safetensors when the repository has them; the .bin files (often published too) only otherwise.
        folder = Path(snapshot_download(text, allow_patterns=patterns + ["*.safetensors", "*.safetensors.index.json"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(text, allow_patterns=patterns + ["pytorch_model*.bin*"]))
        return folder
    except Exception as error:  # network, offline mode, unknown or gated repository: all end the same way
        raise FileNotFoundError(
            f"{argument} {value}: not a local folder, and it could not be fetched from the Hugging Face Hub "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Pass a local folder, or "
            "check the repository id, your network and HF_HUB_OFFLINE."
        ) from None


def _load_weight_file(path: Path, argument: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{argument} {path.parent}: the weight file {path.name} is missing (partial download?)")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only: a pickled checkpoint can never execute code here.
        return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{argument} {path}: cannot read this weight file ({type(error).__name__}: {error})") from None


def load_state_dict(checkpoint_dir: str | os.PathLike, argument: str = "--checkpoint") -> dict[str, torch.Tensor]:
    """Read `model.safetensors` or `pytorch_model.bin`, single file or sharded with an index, without executing code.

    Example:

    ```python
    >>> state = load_state_dict("LongVU_Qwen2_7B")
    >>> state["model.vision_query"].shape
    torch.Size([1, 1024])
    ```
    """
    folder = Path(checkpoint_dir)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = folder / index_name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{argument} {index_path}: not a valid weight index ({error})") from None
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_load_weight_file(folder / shard, argument))
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise ValueError(f"{argument} {index_path}: {len(missing)} indexed tensors are absent from the shards, "
                                 f"e.g. {missing[:3]}")
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return _load_weight_file(folder / name, argument)
    raise FileNotFoundError(
        f"{argument} {folder}: no model.safetensors or pytorch_model.bin (single or sharded with an index) found"
    )


def read_original_config(checkpoint_dir: str | os.PathLike, argument: str = "--checkpoint") -> dict:
    """The official `config.json`, checked to describe a LongVU model this package implements."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{argument} {checkpoint_dir}: config.json is missing")
    try:
        original = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{argument} {path}: not valid JSON ({error})") from None
    model_type = original.get("model_type", "")
    if model_type not in ("cambrian_qwen", "cambrian_llama") or "query_num_list" not in original:
        raise ValueError(
            f"{argument} {path}: not an official LongVU checkpoint (model_type={model_type!r}; expected "
            "'cambrian_qwen' or 'cambrian_llama' with the multimodal keys such as query_num_list)"
        )
    problems = []
    if original.get("mm_projector_type", "sva") != "sva":
        problems.append(f"mm_projector_type={original['mm_projector_type']!r} (only 'sva' exists in LongVU)")
    if original.get("num_query_group", 1) != 1:
        problems.append(f"num_query_group={original['num_query_group']} (the releases use 1)")
    if not original.get("connector_only", True):
        problems.append("connector_only=false (in-LLM vision samplers are not part of LongVU)")
    if original.get("frame_pos", False):
        problems.append("frame_pos=true (disabled in every release, and buggy in the official code)")
    if len(original.get("mm_vision_tower_aux_list", [None, None])) != 2:
        problems.append("mm_vision_tower_aux_list must name exactly two towers (SigLIP, DINOv2)")
    if len(original.get("query_num_list", [])) != 1:
        problems.append(f"query_num_list={original.get('query_num_list')} (one query group expected)")
    token_lens = original.get("mm_vision_tower_aux_token_len_list", [576, 576])
    if len(set(token_lens)) != 1:
        problems.append(f"mm_vision_tower_aux_token_len_list={token_lens} (both towers must share one grid)")
    if problems:
        raise ValueError(f"{argument} {path}: unsupported LongVU configuration: " + "; ".join(problems))
    return original


def config_from_original(original: dict, vision_config, dino_config, **overrides) -> LongVUConfig:
    """Build a `LongVUConfig` from an official LongVU `config.json` and the towers' configs.

    The LongVU settings are carried over under their native names (docs/reference.md §2.7, §8.4): `query_num_list` ->
    `num_queries`, `dino_threshold`, `drop_threshold` -> `stc_threshold`, `tokenizer_model_max_length` ->
    `max_context_length`, `inference_max_length` -> `context_margin`, `highres`, `lowres_token` -> `lowres_grid_size`.
    """
    model_type = original.get("model_type", "cambrian_qwen")
    llm_type = "llama" if "llama" in model_type else "qwen2"
    text_kwargs = {k: v for k, v in original.items() if k not in _MULTIMODAL_KEYS}
    if llm_type == "qwen2":
        text_kwargs.pop("rope_scaling", None)  # the official Qwen wrapper forces it off (cambrian_qwen.py)
    text_config = CONFIG_MAPPING[llm_type](**text_kwargs)
    query_num = original.get("query_num_list", [original.get("image_token_len", 144)])[0]
    if original.get("image_token_len", query_num) != query_num:
        raise ValueError(
            f"--checkpoint config.json: image_token_len={original.get('image_token_len')} differs from "
            f"query_num_list={query_num} (they must agree: 144 for video checkpoints, 576 for image checkpoints)"
        )
    token_len = original.get("mm_vision_tower_aux_token_len_list", [576, 576])[0]
    kwargs = {
        "text_config": text_config,
        "vision_config": vision_config,
        "dino_config": dino_config,
        "num_queries": query_num,
        "encoder_grid_size": int(round(token_len**0.5)),
        "aggregator_hidden_size": original.get("vision_hidden_size", 1024),
        "aggregator_num_layers": original.get("connector_depth", 3),
        "highres": bool(original.get("highres", False)),
        "lowres_grid_size": original.get("lowres_token", 8),
        "dino_threshold": original.get("dino_threshold", 0.83),
        "stc_threshold": original.get("drop_threshold", 0.7),
        "max_context_length": original.get("tokenizer_model_max_length", 8192),
        "context_margin": original.get("inference_max_length", 16),
        "tie_word_embeddings": bool(original.get("tie_word_embeddings", False)),
    }
    kwargs.update(overrides)
    return LongVUConfig(**kwargs)


def _tower_config_dict(config) -> dict:
    # Bookkeeping keys of the tower's own file do not belong in the LongVU sub-config.
    drop = {"architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype"}
    return {k: v for k, v in config.to_dict().items() if k not in drop}


def _tower_config(path: Path, argument: str):
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{argument} {path}: cannot read its config.json ({error})") from None


def _load_tower(model_class, path: Path, dtype: torch.dtype, argument: str, ignore_missing: str | None = None):
    """`from_pretrained`, but a tower with missing weights is an error (transformers would initialise them randomly)."""
    try:
        tower, info = model_class.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{argument} {path}: cannot load its weights ({error})") from None
    missing = [k for k in info["missing_keys"] if not (ignore_missing and k.startswith(ignore_missing))]
    if missing or info["mismatched_keys"]:
        raise ValueError(
            f"{argument} {path}: incomplete checkpoint ({len(missing)} missing weights, e.g. {sorted(missing)[:3]}; "
            f"{len(info['mismatched_keys'])} with another shape)"
        )
    return tower


def load_siglip_vision(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, argument: str = "--siglip"
) -> SiglipVisionModel:
    """The SigLIP vision tower from a `SiglipVisionModel` or a full `SiglipModel` checkpoint (the text tower is
    dropped here, the MAP head when merging). LongVU needs `google/siglip-so400m-patch14-384`'s geometry."""
    path = Path(path)
    config = _tower_config(path, argument)
    if config.model_type not in ("siglip", "siglip_vision_model"):
        raise ValueError(
            f"{argument} {path}: expected a SigLIP checkpoint ({SIGLIP_HUB_ID}), found model_type={config.model_type!r}"
        )
    vision = config.vision_config if config.model_type == "siglip" else config
    if (vision.image_size, vision.patch_size) != (384, 14):
        raise ValueError(
            f"{argument} {path}: LongVU uses SigLIP at 384 px with 14 px patches ({SIGLIP_HUB_ID}); this checkpoint "
            f"has image_size={vision.image_size}, patch_size={vision.patch_size}"
        )
    if config.model_type == "siglip":  # the text tower is loaded too, then dropped
        return _load_tower(SiglipModel, path, dtype, argument, ignore_missing="vision_model.head.").vision_model
    return _load_tower(SiglipVisionModel, path, dtype, argument, ignore_missing="head.")


def load_dinov2(path: str | os.PathLike, dtype: torch.dtype = torch.float32, argument: str = "--dino") -> Dinov2Model:
    """The DINOv2 tower (LongVU uses `facebook/dinov2-giant`, run at 378 px)."""
    path = Path(path)
    config = _tower_config(path, argument)
    if config.model_type != "dinov2":
        raise ValueError(
            f"{argument} {path}: expected a DINOv2 checkpoint ({DINO_HUB_ID}), found model_type={config.model_type!r}"
        )
    if config.patch_size != 14:
        raise ValueError(
            f"{argument} {path}: LongVU uses DINOv2 with 14 px patches ({DINO_HUB_ID}); this checkpoint has "
            f"patch_size={config.patch_size}"
        )
    return _load_tower(Dinov2Model, path, dtype, argument)


# -------------------------------------------------------------------------------------------------------------------
# Mapping and checking
# -------------------------------------------------------------------------------------------------------------------


def rename_key(key: str) -> str:
    """Native name of an official LongVU key; raises `KeyError` for a key with no mapping."""
    for pattern, replacement in KEY_RENAMES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    raise KeyError(key)


def rename_state_dict(state: dict[str, Any], argument: str = "--checkpoint") -> dict[str, Any]:
    """Rename every key of an official checkpoint (tensors or shapes); raises `ValueError` listing unmapped keys."""
    renamed, unmapped = {}, []
    for key, value in state.items():
        try:
            renamed[rename_key(key)] = value
        except KeyError:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"{argument}: {len(unmapped)} key(s) have no LongVU mapping, e.g. {sorted(unmapped)[:5]} "
            "(not an official LongVU checkpoint, or one with towers or extra modules merged in?)"
        )
    return renamed


def check_state_dict(
    expected: dict[str, tuple[int, ...]], provided: dict[str, tuple[int, ...]], argument: str = "--checkpoint"
) -> None:
    """Compare the shapes of the converted tensors with the model's; raises `ValueError` on any missing,
    unexpected or mis-shaped key, naming a few of each."""
    expected = {k: tuple(v) for k, v in expected.items()}
    provided = {k: tuple(v) for k, v in provided.items()}
    missing = sorted(set(expected) - set(provided))
    unexpected = sorted(set(provided) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(provided) if expected[k] != provided[k])
    if not (missing or unexpected or mismatched):
        return
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing, e.g. {missing[:5]}")
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:5]}")
    if mismatched:
        details = ", ".join(f"{k}: {provided[k]} in the files vs {expected[k]} from config.json"
                            for k in mismatched[:5])
        lines.append(f"{len(mismatched)} with another shape ({details})")
    hint = ""
    if any(".pos_embeds." in k for k in unexpected):
        hint = (" The checkpoint has the 2x2-window position embeddings of a 144-query video checkpoint but its "
                "config.json asks for 576 queries: this is the early LongVU_Llama3_2_1B config.json (fixed on "
                "2024-11-21, commit c7c8db9); download the current config.json.")
    elif any(".pos_embeds." in k for k in missing):
        hint = (" config.json asks for 144 queries (a video checkpoint) but the weights have no window position "
                "embeddings (an `_img` checkpoint, 576 queries).")
    raise ValueError(f"{argument}: the weights do not match the model described by config.json: "
                     + "; ".join(lines) + "." + hint)


def _check_tower_widths(state: dict[str, torch.Tensor], siglip_width: int, dino_width: int, siglip: str, dino: str):
    """The SVA's input projections fix each tower's width: a mismatch means the wrong tower was passed."""
    for prefix, width, argument, path, hub_id in (
        ("model.mm_projector_aux_0.0.weight", siglip_width, "--siglip", siglip, SIGLIP_HUB_ID),
        ("model.mm_projector_aux_1.0.weight", dino_width, "--dino", dino, DINO_HUB_ID),
    ):
        if prefix in state and state[prefix].shape[1] != width:
            raise ValueError(
                f"{argument} {path}: its hidden size is {width}, but the LongVU checkpoint was trained on a tower of "
                f"width {state[prefix].shape[1]} ({hub_id} for the released checkpoints)"
            )


def lm_head_is_tied(state: dict[str, torch.Tensor]) -> bool:
    """Tie the LM head to the embeddings only when the file has none or it equals them (Llama-3.2 files store an
    explicit copy; Qwen2-7B's head is a separate matrix)."""
    head = state.get("lm_head.weight")
    return head is None or torch.equal(head, state["model.embed_tokens.weight"])


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    siglip: str | os.PathLike,
    dino: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    **config_overrides,
) -> LongVUForConditionalGeneration:
    """Build a `LongVUForConditionalGeneration` holding the official weights (in memory, not saved).

    `checkpoint`, `siglip` and `dino` are local folders; `config_overrides` are `LongVUConfig` fields.

    Example:

    ```python
    >>> model = convert_checkpoint("LongVU_Qwen2_7B", "siglip-so400m-patch14-384", "dinov2-giant", dtype=torch.bfloat16)
    >>> model.config.num_queries, model.config.stc_threshold
    (144, 0.7)
    ```
    """
    checkpoint, siglip, dino = Path(checkpoint), Path(siglip), Path(dino)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such folder")
    original_config = read_original_config(checkpoint)
    original_state = load_state_dict(checkpoint)
    if "model.embed_tokens.weight" not in original_state:
        raise ValueError(f"--checkpoint {checkpoint}: model.embed_tokens.weight is missing (not a LongVU checkpoint?)")
    siglip_tower, dino_tower = load_siglip_vision(siglip, dtype), load_dinov2(dino, dtype)
    _check_tower_widths(
        original_state, siglip_tower.config.hidden_size, dino_tower.config.hidden_size, str(siglip), str(dino)
    )

    tied = lm_head_is_tied(original_state)
    config_overrides.setdefault("tie_word_embeddings", tied)
    config = config_from_original(
        original_config, _tower_config_dict(siglip_tower.config), _tower_config_dict(dino_tower.config),
        **config_overrides,
    )
    config.text_config.tie_word_embeddings = config.tie_word_embeddings

    state = rename_state_dict(original_state)
    del original_state
    for key, tensor in siglip_tower.state_dict().items():
        if not key.startswith("head."):  # SigLIP's MAP pooling head is unused by LongVU
            state[f"model.vision_tower.{key}"] = tensor
    for key, tensor in dino_tower.state_dict().items():
        state[f"model.dino_tower.{key}"] = tensor
    del siglip_tower, dino_tower
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    # Written above as the checkpoint keys (what `save_pretrained` writes); the model holds the visual modules under
    # `model.video_encoder`.
    state = {module_key(key): tensor for key, tensor in state.items()}

    # Built in the target dtype without random init, then every parameter is replaced by its loaded tensor
    # (`assign`): the model's own storage is never written, so converting takes about one copy of the weights in
    # memory. Everything is checked before anything is loaded.
    with no_init_weights():
        model = LongVUForConditionalGeneration._from_config(config, dtype=dtype)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    check_state_dict(expected, {k: v.shape for k, v in state.items()})
    model_dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    for key in state:
        state[key] = state[key].to(model_dtypes[key]).contiguous()
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


# -------------------------------------------------------------------------------------------------------------------
# Tokenizer, processor, generation defaults
# -------------------------------------------------------------------------------------------------------------------


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def load_tokenizer(folder: str | os.PathLike, text_config=None, argument: str = "--checkpoint"):
    """The checkpoint's tokenizer, or `None` when the folder has no tokenizer files.

    `text_config` (the LLM's config) stands in for the folder's `config.json`, whose `cambrian_*` model type
    `AutoTokenizer` cannot read.
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not _has_tokenizer_files(folder):
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, config=text_config)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{argument} {folder}: cannot load its tokenizer ({error})") from None


# Chat template (processing_longvu.get_chat_template) and end-of-turn token of each LLM family.
_CHAT_FAMILIES = {"qwen2": ("qwen2", "<|im_end|>"), "llama": ("llama3", "<|eot_id|>")}


def build_processor(tokenizer, model: LongVUForConditionalGeneration):
    """A `LongVUProcessor` around the checkpoint's tokenizer, with the chat template the checkpoint was trained with.

    The processor adds the placeholder tokens (`<video>`, `<image>`) to the tokenizer; the config's placeholder ids
    are set to theirs. Qwen2's 152064 embedding rows already cover them; when the tokenizer outgrows the embeddings
    (Llama-3.2: 128256 rows, all used), the embeddings grow by as many rows, set to the mean embedding (the model never
    reads a placeholder's embedding, and generation suppresses these ids).

    Returns the processor and the tokenizer's size before the placeholders (the vocabulary the official loader uses).
    """
    from .processing import LongVUProcessor, LongVUVideoProcessor

    config = model.config
    template_family, _ = _CHAT_FAMILIES.get(config.text_config.model_type, ("qwen2", None))
    base_vocab = len(tokenizer)
    processor = LongVUProcessor(tokenizer=tokenizer, video_processor=LongVUVideoProcessor())
    processor.chat_template = LongVUProcessor.get_chat_template(
        template_family, processor.video_token, processor.image_token
    )
    tokenizer.chat_template = processor.chat_template
    config.video_token_index = processor.video_token_id
    config.image_token_index = processor.image_token_id

    old_rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for matrix in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
                matrix.weight[old_rows:] = matrix.weight[:old_rows].float().mean(0).to(matrix.weight.dtype)
    return processor, base_vocab


def end_of_turn_tokens(config: LongVUConfig) -> tuple[str, ...]:
    """The chat template's end-of-turn token (the official README's stopping keyword)."""
    token = _CHAT_FAMILIES.get(config.text_config.model_type, (None, None))[1]
    return (token,) if token else ()


# Settings of a checkpoint's own generation_config.json that change greedy decoding; the official loader applies
# them (LongVU_Qwen2_7B_img ships Qwen2-7B-Instruct's, with repetition_penalty=1.05). Sampling settings (temperature,
# top_p, top_k) cannot be stored next to do_sample=False and are left out.
_GREEDY_GENERATION_KEYS = ("repetition_penalty", "no_repeat_ngram_size", "bos_token_id", "pad_token_id", "eos_token_id")


def build_generation_config(
    config: LongVUConfig,
    tokenizer=None,
    base_vocab: int | None = None,
    stop_tokens: tuple[str, ...] = (),
    checkpoint_generation: dict | None = None,
) -> GenerationConfig:
    """The authors' decoding (README, docs/reference.md §1.5): greedy, up to 128 new tokens, stop at the chat template's
    end-of-turn token, plus the greedy-relevant settings of the checkpoint's own `generation_config.json`.

    `suppress_tokens` lists the ids the official model cannot produce (ids from the tokenizer's original size on,
    which the official loader cuts off, and the placeholders), so greedy decoding over the full embedding matrix
    picks the same tokens.
    """
    text = config.text_config
    carried = {k: v for k, v in (checkpoint_generation or {}).items() if k in _GREEDY_GENERATION_KEYS and v is not None}
    eos = []
    for ids in (text.eos_token_id, carried.pop("eos_token_id", None)):
        eos += [i for i in (ids if isinstance(ids, list) else [ids]) if i is not None and i not in eos]
    if tokenizer is not None:
        for token in stop_tokens:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id and token_id not in eos:
                eos.append(token_id)
    pad = carried.pop("pad_token_id", None)
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = text.pad_token_id if text.pad_token_id is not None else (eos[0] if eos else None)
    suppress = list(range(base_vocab, text.vocab_size)) if base_vocab is not None else []
    for placeholder in (config.video_token_id, config.image_token_id):
        if placeholder is not None and placeholder < text.vocab_size and placeholder not in suppress:
            suppress.append(placeholder)
    settings = {"bos_token_id": text.bos_token_id, **carried}
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=128,
        use_cache=True,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=pad,
        suppress_tokens=sorted(suppress) or None,
        **settings,
    )


# -------------------------------------------------------------------------------------------------------------------
# Writing the folder
# -------------------------------------------------------------------------------------------------------------------

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def check_output_folder(output: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder unless `overwrite` (then only the converter's own files get replaced)."""
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output {output}: the folder exists and is not empty; choose a new folder or pass --overwrite "
            "(which replaces the converter's own files and leaves every other file alone)"
        )
    return output


def _infer_release(checkpoint: str) -> str | None:
    """The official release a `--checkpoint` value names (Hub id or folder name), if any."""
    name = Path(str(checkpoint).rstrip("/\\")).name
    return name if name in OFFICIAL_RELEASES else None


def _move_into(staging: Path, output: Path) -> None:
    """Move the staged conversion into `output`.

    A new folder is the staging folder renamed (one atomic step). Into an existing folder, the files are moved one by
    one, `config.json` last, so a folder with the new config always has the new weights; weight files of an earlier
    conversion that the new one does not overwrite are removed (as `save_pretrained` itself does for stale shards),
    because `from_pretrained` would prefer a stale `model.safetensors` to a new sharded index. Nothing else is touched.
    """
    if not output.exists():
        os.replace(staging, output)
        umask = os.umask(0)
        os.umask(umask)
        output.chmod(0o777 & ~umask)  # mkdtemp made it private; give it the user's default permissions
        return
    staged = sorted(staging.iterdir(), key=lambda p: p.name == "config.json")
    clashes = [p.name for p in staged if (output / p.name).is_dir()]
    if clashes:
        raise FileExistsError(f"--output {output}: {clashes[0]} is a folder there; the converter will not replace it")
    new_names = {p.name for p in staged}
    for path in output.iterdir():
        if path.is_file() and _WEIGHT_FILE_PATTERN.match(path.name) and path.name not in new_names:
            path.unlink()
    for path in staged:
        os.replace(path, output / path.name)
    staging.rmdir()


def _read_json(path: Path, argument: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{argument} {path}: not valid JSON ({error})") from None


def write_converted_folder(
    folder: Path, model: LongVUForConditionalGeneration, processor, max_shard_size: str, card: dict
) -> None:
    """Weights and configs, tokenizer and processor, remote code with `auto_map`s (all by `save_pretrained`), model
    card."""
    from . import hub

    model.save_pretrained(folder, max_shard_size=max_shard_size)
    if processor is not None:
        processor.save_pretrained(folder)
    hub.write_model_card(
        folder,
        model.config,
        num_suppressed=len(model.generation_config.suppress_tokens or []),
        with_processor=processor is not None,
        repetition_penalty=model.generation_config.repetition_penalty,
        **card,
    )


def convert(
    checkpoint: str | os.PathLike,
    siglip: str | os.PathLike,
    dino: str | os.PathLike,
    output: str | os.PathLike,
    dtype: str = "bfloat16",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    tokenizer: str | os.PathLike | None = None,
    base_model: str | None = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Convert an official LongVU checkpoint into a Hub-ready folder (see the module docstring); returns its path.

    Example:

    ```python
    >>> from longvu_hf.convert_longvu_weights_to_hf import convert
    >>> convert("Vision-CAIR/LongVU_Qwen2_7B", "google/siglip-so400m-patch14-384", "facebook/dinov2-giant",
    ...         "LongVU_Qwen2_7B-hf")
    PosixPath('LongVU_Qwen2_7B-hf')
    ```
    """
    from . import hub

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: choose one of {sorted(DTYPES)}")
    output = check_output_folder(output, overwrite)
    checkpoint_dir = resolve_source(checkpoint, "--checkpoint", _CHECKPOINT_FILES)
    siglip_dir = resolve_source(siglip, "--siglip", _TOWER_FILES)
    dino_dir = resolve_source(dino, "--dino", _TOWER_FILES)
    tokenizer_argument = "--tokenizer" if tokenizer else "--checkpoint"
    tokenizer_dir = checkpoint_dir
    if tokenizer:
        tokenizer_dir = resolve_source(tokenizer, "--tokenizer", _CHECKPOINT_FILES, weights=False)
    for argument, folder in (("--checkpoint", checkpoint_dir), ("--siglip", siglip_dir), ("--dino", dino_dir)):
        if output.resolve() == folder.resolve():
            raise ValueError(f"--output {output}: the same folder as {argument}; write the conversion elsewhere")

    model = convert_checkpoint(checkpoint_dir, siglip_dir, dino_dir, dtype=DTYPES[dtype])
    text_tokenizer = load_tokenizer(tokenizer_dir, model.config.text_config, tokenizer_argument)
    processor, base_vocab = (None, None)
    if text_tokenizer is not None:
        processor, base_vocab = build_processor(text_tokenizer, model)
    model.generation_config = build_generation_config(
        model.config,
        text_tokenizer,
        base_vocab,
        end_of_turn_tokens(model.config),
        _read_json(checkpoint_dir / "generation_config.json", "--checkpoint"),
    )

    release = _infer_release(str(checkpoint))
    if base_model is None and release is not None:
        base_model = f"Vision-CAIR/{release}"
    card = {
        "model_name": push_to_hub.split("/")[-1] if push_to_hub else output.name,
        "repo_id": push_to_hub,
        "release": release,
        "base_model": base_model,
        "dtype": dtype,
        "base_vocab": base_vocab,
        "sources": {"checkpoint": str(checkpoint), "siglip": str(siglip), "dino": str(dino)},
        "output_name": output.name,
    }
    # Everything is written to a staging folder next to the output first: a failure leaves no half-written folder.
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".longvu-convert-", dir=output.parent))
    try:
        write_converted_folder(staging, model, processor, max_shard_size, card)
        _move_into(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if push_to_hub:
        hub.push_folder(output, push_to_hub, private=private)
    return output


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Command-line entry point (also used by `longvu convert`, which passes `prog="longvu convert"`); `argv`
    excludes the program name. Bad input exits with status 2 and a one-line message naming the argument."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m longvu_hf.convert_longvu_weights_to_hf",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="official LongVU checkpoint: folder or Hub id "
                        "(e.g. Vision-CAIR/LongVU_Qwen2_7B)")
    parser.add_argument("--siglip", required=True, help=f"SigLIP checkpoint: folder or Hub id ({SIGLIP_HUB_ID})")
    parser.add_argument("--dino", required=True, help=f"DINOv2 checkpoint: folder or Hub id ({DINO_HUB_ID})")
    parser.add_argument("--output", required=True, help="output folder (must be new or empty unless --overwrite)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES),
                        help="weight dtype (default bfloat16; float16 overflows on long videos in the official code)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: the checkpoint's own)")
    parser.add_argument("--base-model", default=None, help="Hub id recorded as base_model in the model card "
                        "(default: the official repository the checkpoint name matches)")
    parser.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing non-empty folder, replacing only the converter's own files")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the folder to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    try:
        output = convert(
            args.checkpoint, args.siglip, args.dino, args.output, dtype=args.dtype, overwrite=args.overwrite,
            push_to_hub=args.push_to_hub, private=args.private, tokenizer=args.tokenizer,
            base_model=args.base_model, max_shard_size=args.max_shard_size,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.error(str(error))  # a clear one-line message and exit status 2, not a traceback
    print(f"Saved LongVU to {output}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))


if __name__ == "__main__":
    main()
