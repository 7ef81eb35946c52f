"""Parity with the official LongVU code on cases the golden fixtures do not cover.

`tests/fixtures/official_cases/` was written by `make_official_cases.py` there, which runs the official implementation
(Vision-CAIR/LongVU @ 1b0be5c, transformers 4.42.4, float32, CPU) on portrait, 4:3, square and very wide videos, several
DINO windows, partial resolution mixing, other thresholds, a random Llama backbone and a portrait image, and on every
budget edge (`BOUNDARY_CASES` there). Each case goes through the whole public path here: the converter (with the case's
config), the processor on the raw frames, and the model; kept frames, spliced length and greedy tokens must match
exactly, spliced embeddings and the last logits to 1e-4. For the edge cases, `EDGE_DECISIONS` also pins the branch each
one takes (the official run's embeddings hold the same decisions), so that a regenerated fixture that slid off its
edge is noticed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from longvu_hf import LongVUVideoProcessor
from longvu_hf.convert_longvu_weights_to_hf import convert_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
CASES_DIR = FIXTURES / "official_cases"
GOLDEN = FIXTURES / "golden"
CASES = json.loads((CASES_DIR / "cases.json").read_text())


def _load_generator():
    """The fixture generator, loaded by path: it holds `checkpoint_with_overrides`, shared with this test."""
    spec = importlib.util.spec_from_file_location("make_official_cases", CASES_DIR / "make_official_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checkpoint_with_overrides = _load_generator().checkpoint_with_overrides


# Budget 440 tokens (483 - 27 - 16): DINO selection from 6 frames on; full resolution below 3 kept frames, mixing from
# 3 to 6, full resolution + STC above 6 (make_official_cases.BOUNDARY_CASES). The bug each case catches is in brackets.
EDGE_DECISIONS = {
    # [selection trigger `N <= budget`]: 6 frames = the budget, selection runs
    "qwen_dino_trigger_at_budget": dict(frame_selection_ran=True, kept_frame_indices=[3, 5], path="none"),
    "qwen_dino_trigger_below_budget": dict(frame_selection_ran=False, path="mix", high_res_frame_indices=[0, 4]),
    # [full-resolution band `N <= budget`]: 3 kept frames = the budget, mixing
    "qwen_fullres_band_at": dict(path="mix", high_res_frame_indices=[0, 2], tokens_per_frame=[156, 72, 156]),
    "qwen_fullres_band_above": dict(path="mix", high_res_frame_indices=[3], tokens_per_frame=[72, 72, 72, 156]),
    # [low-resolution band `N >= budget`]: 6 kept frames = the budget, still mixing
    "qwen_lowres_band_at": dict(frame_selection_ran=True, path="mix", high_res_frame_indices=[4]),
    "qwen_lowres_band_above": dict(frame_selection_ran=True, path="stc", stc_force_remove=171,
                                   high_res_frame_indices=list(range(7))),
    # [query from the text before the placeholder]: same video, two questions, other full-resolution frames
    "qwen_query_first_question": dict(path="mix", high_res_frame_indices=[2, 4]),
    "qwen_query_second_question": dict(path="mix", high_res_frame_indices=[0, 2]),
    # [forced removal rounded down]: (537 - 442) / 2 chunks = 47.5 -> 48
    "qwen_stc_uneven_chunks": dict(path="stc", stc_force_remove=48, num_visual_tokens=441),
    # [cap not uniform / not applied]: 424 frames survive selection, 400 are taken with int(i * 424 / 400)
    "qwen_cap_400": dict(frame_selection_ran=True, path="stc",
                         kept_frame_indices=[int(i * 424 / 400) for i in range(400)]),
}


def test_every_edge_case_has_a_fixture():
    assert set(EDGE_DECISIONS) <= set(CASES)


@pytest.fixture(scope="module")
def processor():
    return LongVUVideoProcessor()


HEAVY_CASES = {"qwen_cap_400"}  # 424 frames through the towers: about a minute on 2 cores


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.heavy) if name in HEAVY_CASES else name for name in sorted(CASES)]
)
def test_matches_official_code(name, processor, tmp_path):
    spec = CASES[name]
    data = load_file(str(CASES_DIR / f"{name}.safetensors"))
    checkpoint = checkpoint_with_overrides(spec, tmp_path / "checkpoint")
    model = convert_checkpoint(checkpoint, GOLDEN / "towers" / "siglip", GOLDEN / "towers" / "dinov2").eval()
    frames = data["frames_uint8"]
    is_video = spec["kind"] == "video"
    ids = data["input_ids"].clone()
    ids[ids == -200] = model.config.video_token_id if is_video else model.config.image_token_id
    if is_video:
        pixels = dict(processor(frames.numpy()))
    else:
        pixels = dict(processor.preprocess_images([Image.fromarray(frames[0].numpy())]))

    captured = {}

    def capture(module, args, kwargs):
        captured.setdefault("inputs_embeds", kwargs["inputs_embeds"][0].detach().clone())

    handle = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        output = model(input_ids=ids, **pixels)
        generated = model.generate(input_ids=ids, **pixels, max_new_tokens=8, do_sample=False)
    handle.remove()

    embeds = captured["inputs_embeds"]
    assert embeds.shape == data["inputs_embeds"].shape  # spliced length
    assert embeds.shape[0] == spec["spliced_len"]
    if is_video:
        assert output.compression[0]["kept_frame_indices"] == data["kept_frame_indices"].tolist()
        report = output.compression[0]
        assert {key: report[key] for key in EDGE_DECISIONS.get(name, {})} == EDGE_DECISIONS.get(name, {})
    torch.testing.assert_close(embeds, data["inputs_embeds"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(output.logits[0, -1], data["last_logits"], atol=1e-4, rtol=1e-4)
    assert generated[0, ids.shape[1] :].tolist() == data["greedy_tokens"].tolist()
