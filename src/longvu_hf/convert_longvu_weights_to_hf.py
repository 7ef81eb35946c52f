"""Convert an official LongVU checkpoint (+ the SigLIP and DINOv2 towers) into a transformers folder.

    python -m longvu_hf.convert_longvu_weights_to_hf --checkpoint DIR --siglip DIR --dino DIR --output DIR

The official checkpoints (`Vision-CAIR/LongVU_*`) hold the LLM, the SVA and the projector under the original key names
(REFERENCE.md §8.3) but not the vision towers, which are merged in from their own checkpoints. Tensors are renamed into
a freshly built `LongVUForConditionalGeneration` and written with `save_pretrained` (never hand-written keys).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, Dinov2Model, SiglipModel, SiglipVisionModel
from transformers.models.auto import CONFIG_MAPPING

from .configuration_longvu import LongVUConfig
from .modeling import LongVUForConditionalGeneration

# Multimodal keys of the official config that are not LLM settings.
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
    "inference_max_length", "architectures", "_name_or_path", "transformers_version", "torch_dtype", "model_type",
    "mm_vision_tower_aux_list", "max_sequence_length",
}

# (original regex, native replacement), applied in order to the keys of the official checkpoint.
KEY_RENAMES: list[tuple[str, str]] = [
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.mm_projector_aux_(\d+)\.0\.", r"model.vision_aggregator.encoder_projections.\1.linear_1."),
    (r"^model\.mm_projector_aux_(\d+)\.2\.", r"model.vision_aggregator.encoder_projections.\1.linear_2."),
    (r"^model\.mm_projector_aux_(\d+)\.3\.", r"model.vision_aggregator.encoder_projections.\1.layer_norm."),
    (r"^model\.vision_query$", "model.vision_aggregator.query"),
    (r"^model\.image_newline$", "model.image_newline"),
    (r"^model\.vision_sampler_0\.layers\.(\d+)\.pos_embed_(\d+)$", r"model.vision_aggregator.layers.\1.pos_embeds.\2"),
    (r"^model\.vision_sampler_0\.layers\.(\d+)\.cross_attn\.q_proj\.0\.", r"model.vision_aggregator.layers.\1.cross_attn.q_norm."),
    (r"^model\.vision_sampler_0\.layers\.(\d+)\.cross_attn\.q_proj\.1\.", r"model.vision_aggregator.layers.\1.cross_attn.q_proj."),
    (r"^model\.vision_sampler_0\.layers\.(\d+)\.cross_attn\.([kv])_proj_(\d+)\.0\.", r"model.vision_aggregator.layers.\1.cross_attn.\2_norms.\3."),
    (r"^model\.vision_sampler_0\.layers\.(\d+)\.cross_attn\.([kv])_proj_(\d+)\.1\.", r"model.vision_aggregator.layers.\1.cross_attn.\2_projs.\3."),
    (r"^model\.vision_sampler_0\.layers\.(\d+)\.", r"model.vision_aggregator.layers.\1."),
    (r"^lm_head\.", "lm_head."),
]


def rename_key(key: str) -> str:
    """Native name of an official LongVU key; raises `KeyError` for a key with no mapping."""
    for pattern, replacement in KEY_RENAMES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    raise KeyError(key)


def load_state_dict(checkpoint_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read `model.safetensors` or `pytorch_model.bin` (single file or sharded with an index) without executing code."""
    folder = Path(checkpoint_dir)
    for index_name, loader in (
        ("model.safetensors.index.json", load_file),
        ("pytorch_model.bin.index.json", lambda f: torch.load(f, map_location="cpu", weights_only=True)),
    ):
        if (folder / index_name).is_file():
            shards = sorted(set(json.loads((folder / index_name).read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(loader(str(folder / shard)))
            return state
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"--checkpoint {folder}: no model.safetensors or pytorch_model.bin (or sharded index) found")


def config_from_original(original: dict, vision_config, dino_config, **overrides) -> LongVUConfig:
    """Build a `LongVUConfig` from an official LongVU `config.json` and the towers' configs."""
    model_type = original.get("model_type", "cambrian_qwen")
    llm_type = "llama" if "llama" in model_type else "qwen2"
    text_kwargs = {k: v for k, v in original.items() if k not in _MULTIMODAL_KEYS}
    if llm_type == "qwen2":
        text_kwargs["rope_scaling"] = None  # the official Qwen wrapper forces it off
    text_config = CONFIG_MAPPING[llm_type](**text_kwargs)
    query_num = original.get("query_num_list", [original.get("image_token_len", 144)])[0]
    if original.get("image_token_len", query_num) != query_num:
        raise ValueError(
            f"image_token_len={original.get('image_token_len')} differs from query_num_list={query_num}: unsupported"
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


def load_siglip_vision(path: str | os.PathLike, dtype=torch.float32) -> SiglipVisionModel:
    """The SigLIP vision tower from a `SiglipVisionModel` or a full `SiglipModel` checkpoint (the text part and the
    MAP head are dropped)."""
    config = AutoConfig.from_pretrained(path)
    if config.model_type == "siglip":
        return SiglipModel.from_pretrained(path, dtype=dtype).vision_model
    if config.model_type != "siglip_vision_model":
        raise ValueError(f"--siglip {path}: expected a SigLIP checkpoint, found model_type={config.model_type!r}")
    return SiglipVisionModel.from_pretrained(path, dtype=dtype)


def load_dinov2(path: str | os.PathLike, dtype=torch.float32) -> Dinov2Model:
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "dinov2":
        raise ValueError(f"--dino {path}: expected a DINOv2 checkpoint, found model_type={config.model_type!r}")
    return Dinov2Model.from_pretrained(path, dtype=dtype)


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    siglip: str | os.PathLike,
    dino: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    **config_overrides,
) -> LongVUForConditionalGeneration:
    """Build a `LongVUForConditionalGeneration` holding the official weights (in memory, not saved)."""
    original_config = json.loads((Path(checkpoint) / "config.json").read_text())
    siglip_tower, dino_tower = load_siglip_vision(siglip), load_dinov2(dino)
    vision_config = siglip_tower.config.to_dict()
    vision_config["vision_use_head"] = False
    config = config_from_original(original_config, vision_config, dino_tower.config.to_dict(), **config_overrides)
    model = LongVUForConditionalGeneration(config)

    state = {}
    for key, tensor in load_state_dict(checkpoint).items():
        try:
            state[rename_key(key)] = tensor
        except KeyError:
            raise ValueError(f"--checkpoint {checkpoint}: unexpected key {key!r} (not a LongVU checkpoint?)") from None
    for key, tensor in siglip_tower.state_dict().items():
        if not key.startswith("head."):
            state[f"model.vision_tower.{key}"] = tensor
    for key, tensor in dino_tower.state_dict().items():
        state[f"model.dino_tower.{key}"] = tensor
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)

    expected = model.state_dict()
    mismatched = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if mismatched:
        details = ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:5])
        raise ValueError(f"Shape mismatch between the checkpoint and its config: {details}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"Conversion left missing keys {missing[:10]} and unexpected keys {unexpected[:10]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="official LongVU checkpoint folder")
    parser.add_argument("--siglip", required=True, help="SigLIP checkpoint folder (google/siglip-so400m-patch14-384)")
    parser.add_argument("--dino", required=True, help="DINOv2 checkpoint folder (facebook/dinov2-giant)")
    parser.add_argument("--output", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.exists() and any(output.iterdir()):
        parser.error(f"--output {output} exists and is not empty")
    model = convert_checkpoint(args.checkpoint, args.siglip, args.dino, dtype=getattr(torch, args.dtype))
    model.save_pretrained(output)
    print(f"Saved LongVU to {output}")


if __name__ == "__main__":
    main()
