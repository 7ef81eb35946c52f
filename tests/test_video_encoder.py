"""The visual path as its own object (`LongVUModel.video_encoder`): checkpoints keep their key names, the budget is
planned once per video and call, and the per-video cap has one way in (`CompressionSettings.max_visual_tokens`)."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from longvu_hf import CompressionSettings, LongVUForConditionalGeneration, LongVUModel
from longvu_hf.modeling.video_encoder import ENCODER_MODULES, LongVUVideoEncoder
from tiny_model import TINY_VIDEO_TOKEN_ID as V
from tiny_model import make_tiny_model, random_video_inputs


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


def inputs(num_frames: int = 6) -> dict:
    return {"input_ids": torch.tensor([[1, 5, V, 7, 8, 9]]), **random_video_inputs(num_frames)}


def checkpoint_name(key: str) -> str:
    """A parameter's name as the first releases wrote it: the visual modules directly under the model."""
    return key.replace("video_encoder.", "", 1)


def write_first_release_folder(model, folder, base_prefix: str = "model.") -> dict[str, torch.Tensor]:
    """A folder as the first releases saved it (written by hand, not by `save_pretrained`)."""
    state = {checkpoint_name(k): v.contiguous() for k, v in model.state_dict().items()}
    folder.mkdir()
    model.config.save_pretrained(folder)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return state


def test_the_visual_modules_live_in_the_video_encoder(model):
    assert isinstance(model.model.video_encoder, LongVUVideoEncoder)
    names = {name.split(".")[2] for name, _ in model.named_parameters() if name.startswith("model.video_encoder.")}
    assert names == set(ENCODER_MODULES)
    assert not any(name in model.model._modules or name in model.model._parameters for name in ENCODER_MODULES)


def test_a_first_release_folder_loads_exactly(model, tmp_path):
    state = write_first_release_folder(model, tmp_path / "old")
    assert any(key.startswith("model.vision_tower.") for key in state) and not any("video_encoder" in k for k in state)
    loaded, info = LongVUForConditionalGeneration.from_pretrained(tmp_path / "old", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched key
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**inputs()).logits, model(**inputs()).logits)
    # the base model alone, from the same folder (its keys lose the `model.` prefix on the way)
    base, info = LongVUModel.from_pretrained(tmp_path / "old", output_loading_info=True)
    assert set(info["unexpected_keys"]) == {"lm_head.weight"} and not info["missing_keys"]
    assert torch.equal(base.video_encoder.image_newline, model.model.video_encoder.image_newline)


def test_saving_writes_the_first_release_key_names(model, tmp_path):
    # (Inside the towers transformers applies DINOv2's own renamings on save, as it always did: checked by prefix.)
    towers = ("model.vision_tower.", "model.dino_tower.")
    model.save_pretrained(tmp_path / "full")
    saved = set(load_file(tmp_path / "full" / "model.safetensors"))
    assert not any("video_encoder" in key for key in saved)
    assert {".".join(key.split(".")[:2]) for key in saved} == {
        "lm_head.weight", "model.language_model", *(f"model.{name}" for name in ENCODER_MODULES)}
    expected = {checkpoint_name(k) for k in model.state_dict()} - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    assert {k for k in saved if not k.startswith(towers)} == {k for k in expected if not k.startswith(towers)}
    model.model.save_pretrained(tmp_path / "base")
    saved_base = set(load_file(tmp_path / "base" / "model.safetensors"))
    assert {f"model.{key}" for key in saved_base} == saved - {"lm_head.weight"}


def test_an_adapter_saved_before_the_move_loads_its_trained_modules(tmp_path):
    from peft import PeftModel

    from longvu_hf.training import apply_lora

    adapted = apply_lora(make_tiny_model(), r=4, lora_alpha=8, lora_dropout=0.0)
    with torch.no_grad():
        for param in adapted.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    adapted.save_pretrained(tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any(".video_encoder.vision_aggregator." in key for key in weights)
    # the same adapter as the first releases wrote it
    save_file({checkpoint_name(k): v for k, v in weights.items()}, tmp_path / "adapter" / "adapter_model.safetensors")
    loaded = PeftModel.from_pretrained(make_tiny_model(), tmp_path / "adapter")
    with torch.no_grad():
        expected = adapted.merge_and_unload().eval()(**inputs()).logits
        assert torch.equal(loaded.merge_and_unload().eval()(**inputs()).logits, expected)


def test_the_budget_is_planned_once_per_video(model, monkeypatch):
    encoder = model.model.video_encoder
    plans, original = [], encoder.plan
    monkeypatch.setattr(encoder, "plan", lambda *a, **k: plans.append(original(*a, **k)) or plans[-1])
    ids = torch.tensor([[1, V, 5, V, 7]])
    two = random_video_inputs(4)
    pixels = {
        "pixel_values_videos": two["pixel_values_videos"].repeat(2, 1, 1, 1),
        "pixel_values_videos_dino": two["pixel_values_videos_dino"].repeat(2, 1, 1, 1),
        "video_num_frames": torch.tensor([4, 4]),
        "video_sizes": two["video_sizes"].repeat(2, 1),
    }
    with torch.no_grad():
        out = model(input_ids=ids, **pixels)
    assert len(plans) == 2  # one plan per video, used by the towers and by the compression
    for budget, report in zip(plans, out.compression):
        assert report.budget == budget.splice_budget
        assert report.frame_selection_ran == budget.runs_selection(report.num_input_frames)


def test_max_visual_tokens_is_a_deprecated_alias_of_the_settings_field(model):
    with torch.no_grad():
        by_settings = model(**inputs(), compression_settings=CompressionSettings(max_visual_tokens=40))
        with pytest.warns(FutureWarning, match=r"compression_settings=CompressionSettings\(max_visual_tokens"):
            by_alias = model(**inputs(), max_visual_tokens=40)
        with pytest.warns(FutureWarning):
            both_agree = model(**inputs(), max_visual_tokens=40, compression_settings={"max_visual_tokens": 40})
    assert by_settings.compression[0].budget == 40
    assert by_alias.compression == by_settings.compression == both_agree.compression
    assert torch.equal(by_alias.logits, by_settings.logits)
    with pytest.raises(ValueError, match="disagree"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model(**inputs(), max_visual_tokens=40, compression_settings={"max_visual_tokens": 50})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the settings alone warn about nothing
        model(**inputs(), compression_settings={"max_visual_tokens": 40})


def test_the_towers_are_still_reachable_where_they_were():
    """`LongVUModel.vision_tower` (and the other modules the video encoder took over) read the encoder's modules:
    user code and transformers' `get_encoder("video")` keep finding them; nothing is registered twice."""
    model = make_tiny_model()
    base = model.model
    for name in ENCODER_MODULES:
        assert getattr(base, name) is getattr(base.video_encoder, name), name
    assert base.get_encoder(modality="video") is base.video_encoder.vision_tower
    assert not any(key.startswith(("vision_tower.", "dino_tower.")) for key in base.state_dict())


def test_load_state_dict_takes_the_saved_key_names(model):
    """What `save_pretrained` writes (the first releases' names) loads through plain `load_state_dict` too, as the
    Trainer does on resume: nothing silently left out."""
    saved = {checkpoint_name(key): value.clone() + 1.0 for key, value in model.state_dict().items()}
    assert any(key.startswith("model.image_newline") for key in saved)
    fresh = make_tiny_model()
    result = fresh.load_state_dict(saved, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[key] + 1.0), key
