"""The converter: official LongVU checkpoints (original key names, no towers) -> Hub-ready transformers folders.

Covered: the golden fixtures (produced by the official code) converted, saved, reloaded and checked for parity; a
synthetic checkpoint in the exact names-and-shapes layout of each of the six releases (docs/reference.md §8.3, scaled down),
in every file format (safetensors / .bin, single / sharded); the full-size key tables of the releases against a model
built on the meta device; the vocabulary handling against an emulation of the official loader; remote code in a
subprocess that cannot import `longvu_hf`; the model card's quick start; and every bad input.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor, Dinov2Config, SiglipVisionConfig
from transformers import Dinov2Model, SiglipVisionModel

from longvu_hf import LongVUForConditionalGeneration
from longvu_hf import convert_longvu_weights_to_hf as conv
from longvu_hf.modeling.video_encoder import module_key
from tiny_model import random_video_inputs

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
SIGLIP_DIR, DINO_DIR = GOLDEN / "towers" / "siglip", GOLDEN / "towers" / "dinov2"
SRC_DIR = Path(conv.__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------------
# A generator of checkpoints in the original layout (docs/reference.md §8.3), full size (shapes only) or scaled down
# ---------------------------------------------------------------------------------------------------------------------

RELEASES = {  # release -> (LLM, checkpoint kind, STC threshold of its config)
    "LongVU_Qwen2_7B": ("qwen2_7b", "video", 0.7),
    "LongVU_Qwen2_7B_img": ("qwen2_7b", "image", 0.7),
    "LongVU_Llama3_2_3B": ("llama_3b", "video", 0.8),
    "LongVU_Llama3_2_3B_img": ("llama_3b", "image", 0.8),
    "LongVU_Llama3_2_1B": ("llama_1b", "video", 0.8),
    "LongVU_Llama3_2_1B_img": ("llama_1b", "image", 0.8),
}
_LLAMA_COMMON = {
    "model_type": "cambrian_llama", "architectures": ["CambrianLlamaForCausalLM"], "hidden_act": "silu",
    "intermediate_size": 8192, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "tie_word_embeddings": True, "mlp_bias": False, "attention_bias": False, "pretraining_tp": 1,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
FULL_LLMS = {
    "qwen2_7b": {
        "model_type": "cambrian_qwen", "architectures": ["CambrianQwenForCausalLM"], "hidden_act": "silu",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768, "max_window_layers": 28,
        "rope_theta": 1000000.0, "rope_scaling": None, "rms_norm_eps": 1e-6, "bos_token_id": 151643,
        "eos_token_id": 151645, "tie_word_embeddings": False, "sliding_window": None, "use_sliding_window": False,
    },
    "llama_3b": {**_LLAMA_COMMON, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
                 "head_dim": 128},
    "llama_1b": {**_LLAMA_COMMON, "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "head_dim": 64},
}
TINY_LLM = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 128}
TINY_TOKENIZER_SIZE = {"qwen2": 100, "llama": 128}  # Qwen2: fewer tokens than rows (151646 < 152064); Llama: all used


def original_config(release: str, tiny: bool, vision_hidden_size: int = 1024) -> dict:
    """An official `config.json` of `release`: the real values, or scaled-down LLM/SVA widths (`tiny`)."""
    llm, kind, stc_threshold = RELEASES[release]
    config = dict(FULL_LLMS[llm])
    if tiny:
        config.update(TINY_LLM)
        if "head_dim" in config:
            config["head_dim"] = 16
        if llm.startswith("llama"):
            config["bos_token_id"], config["eos_token_id"] = 126, [125, 127]
        else:
            config["bos_token_id"], config["eos_token_id"] = 97, 99
        vision_hidden_size = 64
    queries = 144 if kind == "video" else 576
    config.update({
        "_name_or_path": f"/tmp/iopath_cache/{release}", "torch_dtype": "bfloat16", "transformers_version": "4.42.4",
        "use_cache": True, "initializer_range": 0.02, "attention_dropout": 0.0,
        "mm_projector_type": "sva", "mm_vision_tower_aux_list": ["siglip/CLIP-ViT-SO400M-14-384",
                                                                  "facebook/dinov2-giant-res378"],
        "mm_vision_tower_aux_token_len_list": [576, 576], "vision_tower_aux_token_len_list": [576, 576],
        "image_token_len": queries, "query_num_list": [queries], "num_query_group": 1,
        "vision_hidden_size": vision_hidden_size, "connector_depth": 3, "connector_only": True,
        "num_of_vision_sampler_layers": 10, "start_of_vision_sampler_layers": 0, "stride_of_vision_sampler_layers": 3,
        "highres": kind == "video", "lowres_token": 8, "dino_threshold": 0.83, "drop_threshold": stc_threshold,
        "frame_pos": False, "is_image_newline": True, "image_aspect_ratio": "pad", "image_position": 91,
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat", "tokenizer_model_max_length": 8192,
        "tokenizer_padding_side": "right", "connect_layer": 2, "highres_connect": False, "is_st_sampler": False,
        "spmd_debug": None, "spmd_fsdp_sharding": None, "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
        "unfreeze_mm_vision_tower": False, "use_mm_proj": True, "mm_projector_lr": None, "mm_vision_sampler_lr": None,
        "mm_vision_tower_lr": None,
    })
    return config


def original_key_shapes(config: dict, siglip_width: int, dino_width: int) -> dict[str, tuple[int, ...]]:
    """Every key of an official checkpoint with its shape, written out from docs/reference.md §8.3 (not from the
    converter's rename table)."""
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim", hidden // heads)
    qwen = config["model_type"] == "cambrian_qwen"
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (config["vocab_size"], hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        })
        if qwen:  # Qwen2 has q/k/v biases, Llama none
            shapes.update({p + "self_attn.q_proj.bias": (heads * head_dim,),
                           p + "self_attn.k_proj.bias": (kv_heads * head_dim,),
                           p + "self_attn.v_proj.bias": (kv_heads * head_dim,)})
    width = config["vision_hidden_size"]
    shapes.update({"model.mm_projector.0.weight": (hidden, width), "model.mm_projector.0.bias": (hidden,),
                   "model.mm_projector.2.weight": (hidden, hidden), "model.mm_projector.2.bias": (hidden,),
                   "model.vision_query": (1, width), "model.image_newline": (hidden,)})
    for j, tower_width in enumerate((siglip_width, dino_width)):
        p = f"model.mm_projector_aux_{j}."
        shapes.update({p + "0.weight": (width, tower_width), p + "0.bias": (width,), p + "2.weight": (width, width),
                       p + "2.bias": (width,), p + "3.weight": (width,), p + "3.bias": (width,)})
    grid = math.isqrt(config["mm_vision_tower_aux_token_len_list"][0])
    window = (grid // math.isqrt(config["query_num_list"][0])) ** 2
    for i in range(config["connector_depth"]):
        p = f"model.vision_sampler_0.layers.{i}."
        if window > 1:  # window position embeddings exist only in the 144-query (video) checkpoints
            shapes.update({p + "pos_embed_0": (window, width), p + "pos_embed_1": (window, width)})
        shapes.update({p + "proj_context.weight": (width, width), p + "proj_in.weight": (width, 2 * width),
                       p + "proj_out.linear_1.weight": (width, width), p + "proj_out.linear_2.weight": (width, width),
                       p + "norm.weight": (width,), p + "norm.bias": (width,),
                       p + "cross_attn.q_proj.0.weight": (width,), p + "cross_attn.q_proj.0.bias": (width,),
                       p + "cross_attn.q_proj.1.weight": (width, width),
                       p + "cross_attn.o_proj.weight": (width, width)})
        for kind in "kv":
            for e in (0, 1):
                q = f"{p}cross_attn.{kind}_proj_{e}."
                shapes.update({q + "0.weight": (width,), q + "0.bias": (width,), q + "1.weight": (width, width)})
    return shapes


def make_llm_tokenizer(family: str, size: int):
    """A word-level tokenizer of exactly `size` tokens with the control tokens of Qwen2 or Llama-3 (no placeholders,
    like the released tokenizers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if family == "qwen2":  # placed where the configs' bos/eos ids (97, 98) point
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        special_ids = [97, 98, 99]
    else:
        specials = ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>"]
        special_ids = [123, 124, 125, 126, 127]
    words = "system user assistant You are a helpful . ? What is happening in this video image Describe".split()
    tokens = ["<unk>"] + words + [f"w{i}" for i in range(size - 1 - len(words) - len(specials))]
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab.update(zip(specials, special_ids))
    assert sorted(vocab.values()) == list(range(size))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    if family == "qwen2":
        extra = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"}
    else:
        extra = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **extra)
    tokenizer.add_special_tokens({"extra_special_tokens": specials}, replace_extra_special_tokens=False)
    assert len(tokenizer) == size
    return tokenizer


def write_original_checkpoint(
    folder: Path,
    release: str,
    weights: str = "model.safetensors",
    shards: int = 1,
    head: str = "untied",
    tokenizer: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A scaled-down checkpoint of `release` in the original layout, with the golden towers' widths. `weights` picks
    the file format, `shards` > 1 writes an index; `head` is "untied" (a different lm_head), "tied" (lm_head equal to
    the embeddings) or "absent". Returns the tensors written."""
    folder.mkdir(parents=True, exist_ok=True)
    config = original_config(release, tiny=True)
    siglip_width = json.loads((SIGLIP_DIR / "config.json").read_text())["hidden_size"]
    dino_width = json.loads((DINO_DIR / "config.json").read_text())["hidden_size"]
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=generator) * 0.1 for k, shape in
             original_key_shapes(config, siglip_width, dino_width).items()}
    family = "llama" if config["model_type"] == "cambrian_llama" else "qwen2"
    if family == "qwen2":
        # The rows beyond the tokenizer (152064 - 151646 in the release) get large logits, so that decoding without
        # the suppression would pick them: the vocabulary tests can fail.
        state["lm_head.weight"][TINY_TOKENIZER_SIZE["qwen2"]:] *= 50
    if head == "tied":
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    elif head == "absent":
        del state["lm_head.weight"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    keys = sorted(state)
    groups = [keys[i::shards] for i in range(shards)]
    stem, suffix = weights.split(".", 1)
    names = [weights] if shards == 1 else [f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}" for i in range(shards)]
    for name, group in zip(names, groups):
        part = {k: state[k].contiguous() for k in group}
        if suffix == "safetensors":
            save_file(part, str(folder / name))
        else:
            torch.save(part, folder / name)
    if shards > 1:
        index = {"metadata": {}, "weight_map": {k: name for name, group in zip(names, groups) for k in group}}
        (folder / f"{weights}.index.json").write_text(json.dumps(index))
    if tokenizer:
        make_llm_tokenizer(family, TINY_TOKENIZER_SIZE[family]).save_pretrained(folder)
    if release == "LongVU_Qwen2_7B_img":  # the release ships Qwen2-7B-Instruct's generation_config.json
        (folder / "generation_config.json").write_text(json.dumps({
            "bos_token_id": 97, "pad_token_id": 97, "do_sample": True, "eos_token_id": [99, 97],
            "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20}))
    return state


def run_main(args: list[str], capsys) -> str:
    """Run the CLI expecting a usage error; return its message."""
    with pytest.raises(SystemExit) as exit_info:
        conv.main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def convert_args(checkpoint, output, siglip=SIGLIP_DIR, dino=DINO_DIR, *extra) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--siglip", str(siglip), "--dino", str(dino), "--output", str(output),
            "--dtype", "float32", *extra]


def load_converted(folder: Path) -> LongVUForConditionalGeneration:
    model, info = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Full-size key tables (shapes only, the model on the meta device)
# ---------------------------------------------------------------------------------------------------------------------

REFERENCE_KEY_COUNTS = {"LongVU_Qwen2_7B": 429, "LongVU_Qwen2_7B_img": 423, "LongVU_Llama3_2_3B": 345}
REFERENCE_NON_LLM_PARAMETERS = {"LongVU_Qwen2_7B": 56_049_152, "LongVU_Qwen2_7B_img": 56_024_576,
                                "LongVU_Llama3_2_3B": 52_115_456}


@pytest.mark.parametrize("release", RELEASES)
def test_full_size_release_keys_map_onto_the_model(release):
    config = original_config(release, tiny=False)
    shapes = original_key_shapes(config, siglip_width=1152, dino_width=1536)
    # The generator reproduces the counts docs/reference.md §8.3 enumerated from the official classes.
    if release in REFERENCE_KEY_COUNTS:
        assert len(shapes) == REFERENCE_KEY_COUNTS[release]
        llm_key = re.compile(r"model\.(embed_tokens|layers|norm)\.|lm_head")
        non_llm = sum(math.prod(shape) for key, shape in shapes.items() if not llm_key.match(key))
        assert non_llm == REFERENCE_NON_LLM_PARAMETERS[release]

    siglip = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                image_size=384, patch_size=14).to_dict()
    dino = Dinov2Config(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4,
                        use_swiglu_ffn=True, image_size=518, patch_size=14).to_dict()
    tied = config["model_type"] == "cambrian_llama"  # as if lm_head equalled the embeddings
    longvu_config = conv.config_from_original(config, siglip, dino, tie_word_embeddings=tied)
    assert longvu_config.num_queries == config["query_num_list"][0]
    with torch.device("meta"):
        model = LongVUForConditionalGeneration(longvu_config)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith((
        "model.video_encoder.vision_tower.", "model.video_encoder.dino_tower."))}
    # checkpoint key names (`model.vision_aggregator.*`) -> the model's (`model.video_encoder.vision_aggregator.*`)
    provided = {module_key(k): v for k, v in conv.rename_state_dict(shapes).items()}
    if tied:
        del expected["lm_head.weight"], provided["lm_head.weight"]
    conv.check_state_dict(expected, provided)  # raises on any missing, unexpected or mis-shaped key


# ---------------------------------------------------------------------------------------------------------------------
# The six releases, scaled down, through the CLI and back through from_pretrained
# ---------------------------------------------------------------------------------------------------------------------

SYNTHETIC_VARIANTS = {  # release -> (weights file, shards, lm_head)
    "LongVU_Qwen2_7B": ("model.safetensors", 1, "untied"),
    "LongVU_Qwen2_7B_img": ("pytorch_model.bin", 1, "untied"),
    "LongVU_Llama3_2_3B": ("model.safetensors", 3, "tied"),
    "LongVU_Llama3_2_3B_img": ("pytorch_model.bin", 2, "tied"),
    "LongVU_Llama3_2_1B": ("model.safetensors", 1, "untied"),
    "LongVU_Llama3_2_1B_img": ("pytorch_model.bin", 1, "absent"),
}


@pytest.mark.parametrize("release", SYNTHETIC_VARIANTS)
def test_synthetic_release_converts_and_reloads(tmp_path, release):
    weights, shards, head = SYNTHETIC_VARIANTS[release]
    checkpoint = tmp_path / release
    original = write_original_checkpoint(checkpoint, release, weights=weights, shards=shards, head=head)
    output = tmp_path / "out"
    conv.main(convert_args(checkpoint, output, SIGLIP_DIR, DINO_DIR, "--max-shard-size", "200KB"))

    assert (output / "model.safetensors.index.json").is_file()  # sharded safetensors
    model = load_converted(output)
    config, original_config_json = model.config, json.loads((checkpoint / "config.json").read_text())
    kind, family = RELEASES[release][1], "llama" if "Llama" in release else "qwen2"
    tokenizer_size = TINY_TOKENIZER_SIZE[family]

    # Every original tensor is in the model under its native name, unchanged (the new placeholder rows aside).
    state = model.state_dict()
    for key, tensor in original.items():
        native = state[module_key(conv.rename_key(key))]
        assert torch.equal(native[: tensor.shape[0]], tensor), key
    for prefix, tower in (("model.video_encoder.vision_tower.", SIGLIP_DIR), ("model.video_encoder.dino_tower.", DINO_DIR)):
        reference = (SiglipVisionModel if "siglip" in str(tower) else Dinov2Model).from_pretrained(tower).state_dict()
        for key, tensor in reference.items():
            if not key.startswith("head."):
                assert torch.equal(state[prefix + key], tensor), prefix + key
    assert not any(k.startswith("model.video_encoder.vision_tower.head.") for k in state)

    # The LM head is tied exactly when the file's head equals the embeddings (or is absent).
    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == (head != "untied") == config.tie_word_embeddings

    # Settings carried over from the original config.json.
    assert config.num_queries == original_config_json["query_num_list"][0] == (144 if kind == "video" else 576)
    assert config.highres == (kind == "video")
    assert config.stc_threshold == original_config_json["drop_threshold"]
    assert (config.dino_threshold, config.max_context_length, config.lowres_grid_size) == (0.83, 8192, 8)
    assert config.text_config.model_type == family and config.dtype == torch.float32

    # Vocabulary: placeholders are special tokens inside the embedding matrix; generation suppresses every id the
    # official loader (which shrinks the matrix to the tokenizer) cannot produce.
    processor = AutoProcessor.from_pretrained(output)
    assert (config.video_token_id, config.image_token_id) == (tokenizer_size, tokenizer_size + 1)
    assert processor.tokenizer.convert_tokens_to_ids(["<video>", "<image>"]) == [tokenizer_size, tokenizer_size + 1]
    rows = model.get_input_embeddings().num_embeddings
    assert rows == (128 if family == "qwen2" else tokenizer_size + 2) == config.text_config.vocab_size
    assert model.generation_config.suppress_tokens == list(range(tokenizer_size, rows))
    assert model.generation_config.do_sample is False and model.generation_config.max_new_tokens == 128
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<|im_end|>" if family == "qwen2" else "<|eot_id|>")
    eos = model.generation_config.eos_token_id
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])
    if release == "LongVU_Qwen2_7B_img":  # greedy-relevant settings of the checkpoint's own generation config kept
        assert model.generation_config.repetition_penalty == 1.05 and eos == [99, 97]
        assert model.generation_config.temperature is None  # sampling settings cannot sit next to do_sample=False
        assert "repetition penalty 1.05" in (output / "README.md").read_text()
    else:
        assert model.generation_config.repetition_penalty in (None, 1.0)
    message = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What"}]}
    prompt = processor.apply_chat_template([message], add_generation_prompt=True)
    expected_start = "<|begin_of_text|><|start_header_id|>system" if family == "llama" else "<|im_start|>system"
    assert prompt.startswith(expected_start)
    assert "<video>\nWhat" in prompt

    card = ModelCard.load(output / "README.md")
    assert card.data.base_model == f"Vision-CAIR/{release}" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == ("any-to-any" if kind == "video" else "image-text-to-text")
    assert f"\n# {output.name}\n" in card.text
    assert ("Cutting Knowledge Date" in card.text) == (family == "llama")  # the Llama template difference
    assert ("Llama 3.2 Community License" in card.text) == (family == "llama")


@pytest.fixture(scope="module")
def converted_qwen(tmp_path_factory) -> Path:
    """The scaled-down LongVU_Qwen2_7B (with its tokenizer) converted through the CLI."""
    root = tmp_path_factory.mktemp("qwen")
    write_original_checkpoint(root / "LongVU_Qwen2_7B", "LongVU_Qwen2_7B")
    conv.main(convert_args(root / "LongVU_Qwen2_7B", root / "LongVU_Qwen2_7B-hf"))
    return root / "LongVU_Qwen2_7B-hf"


def test_greedy_decoding_matches_the_official_vocabulary(converted_qwen):
    """The official loader shrinks Qwen2's 152064 embedding rows to the tokenizer's 151646; the converted model keeps
    them and suppresses the extra ids. Same greedy tokens; without the suppression they would differ."""
    model = load_converted(converted_qwen)
    official = load_converted(converted_qwen)
    official.resize_token_embeddings(TINY_TOKENIZER_SIZE["qwen2"])  # what the official builder.py does
    official.generation_config.suppress_tokens = None

    inputs = {"input_ids": torch.tensor([[98, 5, 6, model.config.video_token_id, 7, 8, 99]]), **random_video_inputs(3)}
    ours = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
    reference = official.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(ours, reference)
    unsuppressed_config = copy.deepcopy(model.generation_config)
    unsuppressed_config.suppress_tokens = []  # (None would fall back to the model's default)
    unsuppressed_config.max_new_tokens = unsuppressed_config.min_new_tokens = 6
    unsuppressed = model.generate(**inputs, generation_config=unsuppressed_config)
    assert unsuppressed[0, -6:].max() >= TINY_TOKENIZER_SIZE["qwen2"]


# ---------------------------------------------------------------------------------------------------------------------
# Golden fixtures (official implementation): convert, save, reload, parity
# ---------------------------------------------------------------------------------------------------------------------


# Two video cases (DINO selection + mixing; STC + truncation) and the image-checkpoint case; test_golden_parity.py
# checks every case in memory.
@pytest.mark.parametrize("case_name", ["qwen_mix_landscape", "qwen_stc_landscape", "qwen_image_img_ckpt"])
def test_golden_case_parity_after_save_and_reload(tmp_path, case_name):
    folder = GOLDEN / case_name
    case = json.loads((folder / "case.json").read_text())
    inputs, expected = load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "expected.safetensors"))
    conv.convert(folder / "reference_checkpoint", SIGLIP_DIR, DINO_DIR, tmp_path / "out", dtype="float32")
    model = load_converted(tmp_path / "out")

    is_video = case["input"]["kind"] == "video"
    ids = inputs["input_ids"].clone()
    ids[ids == -200] = model.config.video_token_id if is_video else model.config.image_token_id
    height, width = inputs["frames_uint8"].shape[1:3]
    if is_video:
        visual = {"pixel_values_videos": inputs["siglip_pixel_values_u8"],
                  "pixel_values_videos_dino": inputs["dino_pixel_values_u8"],
                  "video_num_frames": torch.tensor([inputs["frames_uint8"].shape[0]]),
                  "video_sizes": torch.tensor([[height, width]])}
    else:
        visual = {"pixel_values": inputs["siglip_pixel_values_u8"], "pixel_values_dino": inputs["dino_pixel_values_u8"],
                  "image_sizes": torch.tensor([[height, width]])}
    tolerance = {k: case["tolerances"]["logits"][k] for k in ("atol", "rtol")}
    with torch.no_grad():
        logits = model(input_ids=ids, **visual).logits
    torch.testing.assert_close(logits, expected["logits"], **tolerance)

    generation = case["generation"]
    out = model.generate(input_ids=ids, **visual, max_new_tokens=generation["max_new_tokens"], do_sample=False,
                         eos_token_id=generation["eos_token_id"])
    assert out[:, -expected["greedy_tokens"].shape[1]:].tolist() == expected["greedy_tokens"].tolist()


# ---------------------------------------------------------------------------------------------------------------------
# Remote code and the model card
# ---------------------------------------------------------------------------------------------------------------------

REMOTE_CODE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["longvu_hf"] = None  # the package cannot be imported
    sys.path = [p for p in sys.path if not p.startswith(sys.argv[3])]
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, golden = sys.argv[1], sys.argv[2]
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs, expected = load_file(golden + "/inputs.safetensors"), load_file(golden + "/expected.safetensors")
    ids = inputs["input_ids"].clone()
    ids[ids == -200] = model.config.video_token_id
    height, width = inputs["frames_uint8"].shape[1:3]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values_videos=inputs["siglip_pixel_values_u8"],
                       pixel_values_videos_dino=inputs["dino_pixel_values_u8"],
                       video_num_frames=torch.tensor([inputs["frames_uint8"].shape[0]]),
                       video_sizes=torch.tensor([[height, width]])).logits
    message = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What"}]}
    prompt = processor.apply_chat_template([message], add_generation_prompt=True)
    print(json.dumps({
        "classes": [type(model).__module__, type(processor).__module__, type(processor.video_processor).__module__],
        "max_abs_diff": (logits - expected["logits"]).abs().max().item(),
        "placeholder_in_prompt": "<video>" in prompt,
    }))
""")


def test_remote_code_loads_without_the_package(tmp_path):
    golden = GOLDEN / "qwen_mix_landscape"
    make_llm_tokenizer("qwen2", 100).save_pretrained(tmp_path / "tokenizer")
    output = tmp_path / "LongVU-remote"
    conv.convert(golden / "reference_checkpoint", SIGLIP_DIR, DINO_DIR, output, dtype="float32",
                 tokenizer=tmp_path / "tokenizer")
    for name in ("configuration_longvu.py", "modeling_longvu.py", "processing_longvu.py", "video_processing_longvu.py"):
        source = (output / name).read_text()
        assert not re.search(r"^\s*(from \.\.|from longvu_hf|import longvu_hf)", source, re.M), name

    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", REMOTE_CODE_SCRIPT, str(output), str(golden), str(SRC_DIR)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules.") for module in report["classes"]), report
    tolerance = json.loads((golden / "case.json").read_text())["tolerances"]["logits"]["atol"]
    assert report["max_abs_diff"] < tolerance and report["placeholder_in_prompt"]


def test_model_card_front_matter(converted_qwen):
    card = ModelCard.load(converted_qwen / "README.md")
    data = card.data.to_dict()
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == ("transformers", "any-to-any",
                                                                             "apache-2.0")
    assert "video-text-to-text" in data["tags"]
    assert data["base_model"] == "Vision-CAIR/LongVU_Qwen2_7B" and data["base_model_relation"] == "finetune"
    results = {r["dataset"]["name"]: r["metrics"][0]["value"] for r in data["model-index"][0]["results"]}
    assert results["EgoSchema (500-question subset)"] == 67.6 and results["MLVU dev, M-avg"] == 65.4
    assert len(results) == 5
    assert "| `stc_threshold`, `stc_window_size` | 0.7, 8 |" in card.text and "| `num_queries` | 144 |" in card.text
    assert "suppress_tokens` lists the 28 ids" in card.text.replace("\n", " ")
    assert str(converted_qwen.parent) not in card.text  # no local paths of the converting machine


def test_model_card_pipeline_tag_runs_without_a_task(tmp_path, converted_qwen, make_video, monkeypatch):
    """`pipeline(model=repo_id)` takes the task from the card's `pipeline_tag` on the Hub; here the Hub's answer is
    the converted card's front matter, and the pipeline it names runs on the folder."""
    import transformers.pipelines as pipelines
    from transformers import pipeline

    data = ModelCard.load(converted_qwen / "README.md").data
    monkeypatch.setattr(pipelines, "is_offline_mode", lambda: False)
    monkeypatch.setattr(pipelines, "hf_api", lambda: SimpleNamespace(
        model_info=lambda model, token=None: SimpleNamespace(pipeline_tag=data.pipeline_tag,
                                                             library_name=data.library_name)))
    answerer = pipeline(model=str(converted_qwen), dtype=torch.float32)
    assert answerer.task == data.pipeline_tag
    video = make_video(tmp_path / "clip.mp4", fps=2, num_frames=4)
    messages = [{"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": "What"}]}]
    result = answerer(text=messages, max_new_tokens=3, return_full_text=False, generate_kwargs={"do_sample": False})
    assert isinstance(result[0]["generated_text"], str)


@pytest.mark.parametrize("release", ["LongVU_Qwen2_7B", "LongVU_Llama3_2_1B_img"])
def test_model_card_quick_start_runs(tmp_path, release, converted_qwen, make_video):
    """The card's quick start, run as written on the converted folder and a real (tiny) video or image."""
    if release == "LongVU_Qwen2_7B":
        folder = converted_qwen
        media = make_video(tmp_path / "video.mp4", fps=2, num_frames=6)
    else:
        write_original_checkpoint(tmp_path / release, release)
        folder = tmp_path / f"{release}-hf"
        conv.main(convert_args(tmp_path / release, folder))
        media = tmp_path / "image.jpg"
        Image.fromarray(torch.randint(0, 256, (36, 64, 3), dtype=torch.uint8).numpy()).save(media)
    card = ModelCard.load(folder / "README.md").text
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    code = code.replace(f'"path/to/{folder.name}"', repr(str(folder)))
    code = re.sub(r'"(video\.mp4|image\.jpg)"', repr(str(media)), code)
    code = code.replace("max_new_tokens=128", "max_new_tokens=4")
    assert str(folder) in code and str(media) in code
    printed = []
    exec(compile(code, "model_card_quick_start", "exec"), {"print": printed.append})
    assert len(printed) == 1 and isinstance(printed[0], str)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "LongVU_Qwen2_7B"
    write_original_checkpoint(folder, "LongVU_Qwen2_7B", tokenizer=False)
    return folder


def _copy_checkpoint(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_missing_or_foreign_checkpoint_folder(tmp_path, capsys):
    assert "--checkpoint" in run_main(convert_args(tmp_path / "nowhere", tmp_path / "out"), capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    message = run_main(convert_args(empty, tmp_path / "out"), capsys)
    assert "--checkpoint" in message and "config.json is missing" in message
    (empty / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64}))
    message = run_main(convert_args(empty, tmp_path / "out"), capsys)
    assert "not an official LongVU checkpoint" in message
    assert not (tmp_path / "out").exists()


def test_missing_weights_and_partial_downloads(tmp_path, good_checkpoint):
    no_weights = _copy_checkpoint(good_checkpoint, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="--checkpoint .*no model.safetensors or pytorch_model.bin"):
        conv.convert(no_weights, SIGLIP_DIR, DINO_DIR, tmp_path / "out")

    sharded = tmp_path / "sharded"
    write_original_checkpoint(sharded, "LongVU_Qwen2_7B", shards=3, tokenizer=False)
    (sharded / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors is missing"):
        conv.convert(sharded, SIGLIP_DIR, DINO_DIR, tmp_path / "out")

    partial = _copy_checkpoint(good_checkpoint, tmp_path / "partial")
    state = load_file(str(partial / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".layers.2." not in k}, str(partial / "model.safetensors"))
    with pytest.raises(ValueError, match="--checkpoint.*missing.*vision_aggregator.layers.2"):
        conv.convert(partial, SIGLIP_DIR, DINO_DIR, tmp_path / "out")

    corrupt = _copy_checkpoint(good_checkpoint, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="--checkpoint .*cannot read this weight file"):
        conv.convert(corrupt, SIGLIP_DIR, DINO_DIR, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class _Payload:
    """Unpickling this would run code; `weights_only=True` must refuse it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_is_never_executed(tmp_path, good_checkpoint):
    folder = _copy_checkpoint(good_checkpoint, tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code_ran"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.image_newline": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(ValueError, match="--checkpoint .*cannot read this weight file"):
        conv.convert(folder, SIGLIP_DIR, DINO_DIR, tmp_path / "out")
    assert not marker.exists()


def test_unmapped_and_mis_shaped_keys(tmp_path, good_checkpoint):
    extra = _copy_checkpoint(good_checkpoint, tmp_path / "extra")
    state = load_file(str(extra / "model.safetensors"))
    state["model.vision_tower.blocks.0.weight"] = torch.zeros(2)
    save_file(state, str(extra / "model.safetensors"))
    with pytest.raises(ValueError, match=r"--checkpoint: 1 key\(s\) have no LongVU mapping.*vision_tower.blocks"):
        conv.convert(extra, SIGLIP_DIR, DINO_DIR, tmp_path / "out")

    shape = _copy_checkpoint(good_checkpoint, tmp_path / "shape")
    config = json.loads((shape / "config.json").read_text())
    config["intermediate_size"] += 8
    (shape / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"--checkpoint.*another shape.*mlp.gate_proj.weight: \(96, 64\) in the files"):
        conv.convert(shape, SIGLIP_DIR, DINO_DIR, tmp_path / "out")


def test_early_llama_1b_config_is_explained(tmp_path):
    """The first LongVU_Llama3_2_1B config.json said 576 queries for a 144-query video checkpoint (issues #14, #22)."""
    folder = tmp_path / "LongVU_Llama3_2_1B"
    write_original_checkpoint(folder, "LongVU_Llama3_2_1B", tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    config["image_token_len"], config["query_num_list"] = 576, [576]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="early LongVU_Llama3_2_1B config.json .*c7c8db9"):
        conv.convert(folder, SIGLIP_DIR, DINO_DIR, tmp_path / "out")


def test_wrong_vision_towers(tmp_path, good_checkpoint, capsys):
    message = run_main(convert_args(good_checkpoint, tmp_path / "out", DINO_DIR, DINO_DIR), capsys)
    assert "--siglip" in message and "expected a SigLIP checkpoint" in message
    message = run_main(convert_args(good_checkpoint, tmp_path / "out", SIGLIP_DIR, SIGLIP_DIR), capsys)
    assert "--dino" in message and "expected a DINOv2 checkpoint" in message

    narrow = SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=384, patch_size=14))
    narrow.save_pretrained(tmp_path / "siglip-narrow")
    with pytest.raises(ValueError, match="--siglip .*hidden size is 16.*width 32"):
        conv.convert(good_checkpoint, tmp_path / "siglip-narrow", DINO_DIR, tmp_path / "out")
    other_patch = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=224, patch_size=16))
    other_patch.save_pretrained(tmp_path / "siglip-224")
    with pytest.raises(ValueError, match="--siglip .*384 px with 14 px patches"):
        conv.convert(good_checkpoint, tmp_path / "siglip-224", DINO_DIR, tmp_path / "out")
    partial_dino = _copy_checkpoint(DINO_DIR, tmp_path / "dino-partial")
    weights = load_file(str(partial_dino / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, str(partial_dino / "model.safetensors"))
    with pytest.raises(ValueError, match="--dino .*incomplete checkpoint"):
        conv.convert(good_checkpoint, SIGLIP_DIR, partial_dino, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_full_siglip_model_layout_gives_the_same_tower(tmp_path, good_checkpoint):
    """`google/siglip-so400m-patch14-384` is a full `SiglipModel` (text tower, MAP head): only its vision part
    is kept."""
    from transformers import SiglipConfig, SiglipModel

    vision = SiglipVisionModel.from_pretrained(SIGLIP_DIR)
    full = SiglipModel(SiglipConfig(vision_config=vision.config.to_dict(),
                                    text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                                 "num_attention_heads": 2, "vocab_size": 50}))
    missing, unexpected = full.vision_model.load_state_dict(vision.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    full.save_pretrained(tmp_path / "siglip-full")
    from_full = conv.convert_checkpoint(good_checkpoint, tmp_path / "siglip-full", DINO_DIR)
    from_vision = conv.convert_checkpoint(good_checkpoint, SIGLIP_DIR, DINO_DIR)
    tower_full = from_full.model.video_encoder.vision_tower.state_dict()
    tower_vision = from_vision.model.video_encoder.vision_tower.state_dict()
    assert tower_full.keys() == tower_vision.keys() and not any(k.startswith("head.") for k in tower_full)
    assert all(torch.equal(tower_full[k], tower_vision[k]) for k in tower_full)


def test_hub_ids_without_network_name_the_argument(tmp_path, good_checkpoint, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for argument, args in (
        ("--checkpoint", ("Vision-CAIR/LongVU_Qwen2_7B", SIGLIP_DIR, DINO_DIR)),
        ("--siglip", (good_checkpoint, "google/siglip-so400m-patch14-384", DINO_DIR)),
        ("--dino", (good_checkpoint, SIGLIP_DIR, "facebook/dinov2-giant")),
    ):
        with pytest.raises(FileNotFoundError, match=f"^{argument} .*could not be fetched from the Hugging Face Hub"):
            conv.convert(*args, tmp_path / "out")


def test_hub_ids_are_downloaded_safetensors_first(tmp_path, monkeypatch):
    import huggingface_hub

    repos = {"org/with-safetensors": ["model.safetensors", "pytorch_model.bin"], "org/bin-only": ["pytorch_model.bin"]}
    requests = []

    def fake_snapshot_download(repo_id, allow_patterns):
        requests.append((repo_id, allow_patterns))
        folder = tmp_path / repo_id.replace("/", "--")
        folder.mkdir(exist_ok=True)
        for name in repos[repo_id] + ["config.json"]:
            if any(Path(name).match(pattern) for pattern in allow_patterns):
                (folder / name).touch()
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder = conv.resolve_source("org/with-safetensors", "--checkpoint", ["*.json"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    folder = conv.resolve_source("org/bin-only", "--dino", ["config.json"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    assert all(not any(p.endswith(".py") for p in patterns) for _, patterns in requests)  # never remote code


def test_output_folder_is_never_clobbered(tmp_path, good_checkpoint, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    message = run_main(convert_args(good_checkpoint, output), capsys)
    assert "--output" in message and "--overwrite" in message
    assert [p.name for p in output.iterdir()] == ["notes.txt"]

    # --overwrite writes the converter's files next to the user's; a stale single-file checkpoint from an earlier
    # run would shadow the new sharded one, so it goes.
    (output / "model.safetensors").write_bytes(b"stale")
    (output / "config.json").write_text("{}")
    conv.main(convert_args(good_checkpoint, output, SIGLIP_DIR, DINO_DIR, "--overwrite", "--max-shard-size", "200KB"))
    assert (output / "notes.txt").read_text() == "mine"
    assert not (output / "model.safetensors").exists() and (output / "model.safetensors.index.json").is_file()
    load_converted(output)
    assert not any(p.name.startswith(".longvu-convert-") for p in tmp_path.iterdir())

    copy_of_checkpoint = _copy_checkpoint(good_checkpoint, tmp_path / "in_place")
    with pytest.raises(ValueError, match="--output .*the same folder as --checkpoint"):
        conv.convert(copy_of_checkpoint, SIGLIP_DIR, DINO_DIR, copy_of_checkpoint, overwrite=True)
    assert sorted(p.name for p in copy_of_checkpoint.iterdir()) == ["config.json", "model.safetensors"]


def test_default_bfloat16_and_push_to_hub(tmp_path, good_checkpoint, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"],
                                                                                  kw["folder_path"])))
    output = tmp_path / "out"
    conv.main(["--checkpoint", str(good_checkpoint), "--siglip", str(SIGLIP_DIR), "--dino", str(DINO_DIR),
               "--output", str(output), "--push-to-hub", "me/LongVU-hf"])
    assert calls[0][:2] == ("create", "me/LongVU-hf") and calls[1] == ("upload", "me/LongVU-hf", str(output))
    assert 'model_id = "me/LongVU-hf"' in (output / "README.md").read_text()
    weights = load_file(str(output / "model.safetensors"))
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.bfloat16}
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
