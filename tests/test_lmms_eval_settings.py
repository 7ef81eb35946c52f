"""The lmms-eval model's settings, without lmms-eval: which compression settings and sampling reach `generate` and the
processor for each combination of a benchmark protocol and explicit model arguments.

lmms-eval (and loguru, which it brings) is replaced by small stand-ins for the three names the integration imports,
so these run in the README's test command; `tests/test_lmms_eval.py` runs the real lmms-eval command line.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

EXPECTED_PROTOCOLS = {  # the official scripts' settings (docs/evaluation.md, "Protocols")
    "videomme": ({"stc_threshold": 0.65}, {"fps": 0.5}),
    "mlvu": ({"stc_threshold": 0.77, "dino_threshold": 0.82}, {"fps": 0.5, "max_frames": 1000, "max_frames_mode": "stride"}),
    "egoschema": ({"stc_threshold": 0.8}, {"fps": 0.5, "max_frames": 1000, "max_frames_mode": "stride"}),
    "mvbench": ({"stc_threshold": 0.8}, {"fps": 2.0}),
}


@pytest.fixture
def integration(monkeypatch):
    """`longvu_hf.integrations.lmms_eval`, imported against stand-ins for lmms-eval and loguru."""
    return lmms_eval_with_stand_ins(monkeypatch)


def lmms_eval_with_stand_ins(monkeypatch):
    """`longvu_hf.integrations.lmms_eval` imported against stand-ins for lmms-eval and loguru (also used by
    `tests/test_vllm.py`, whose environment has no lmms-eval)."""

    class Base:  # lmms_eval.api.model.lmms: what the integration uses of it
        def __init__(self):
            self.task_dict = {}

    def module(name, **attributes):
        created = types.ModuleType(name)
        created.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, created)

    record = types.SimpleNamespace
    module("lmms_eval")
    module("lmms_eval.api")
    module("lmms_eval.api.instance", GenerationResult=record, Instance=object, TokenCounts=record)
    module("lmms_eval.api.model", lmms=Base)
    module("lmms_eval.protocol", ChatMessages=record)
    log = types.SimpleNamespace(info=lambda *a, **k: None, debug=lambda *a, **k: None)
    module("loguru", logger=log)
    monkeypatch.delitem(sys.modules, "longvu_hf.integrations.lmms_eval", raising=False)
    loaded = importlib.import_module("longvu_hf.integrations.lmms_eval")
    monkeypatch.delitem(sys.modules, "longvu_hf.integrations.lmms_eval")  # the next import gets the real lmms-eval
    return loaded


class FakeModel:
    """Records what `generate` receives; answers with two new tokens. Its config holds the budget fields the settings
    are checked against (`longvu_hf.session.plan_budget`)."""

    def __init__(self):
        self.calls = []
        self.config = types.SimpleNamespace(max_context_length=8192, context_margin=16, dino_threshold=0.83,
                                            stc_threshold=0.7)

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        ids = kwargs["input_ids"]
        return torch.cat([ids, torch.full((ids.shape[0], 2), 7)], dim=1)


class FakeProcessor:
    tokenizer = types.SimpleNamespace(pad_token_id=0, eos_token_id=2)

    def batch_decode(self, tokens, skip_special_tokens=True):
        return ["B" for _ in tokens]


def build(integration, monkeypatch, **arguments):
    """A `LongVULmmsEvalModel` whose loading is replaced by a fake model and processor."""
    model = FakeModel()
    monkeypatch.setattr(integration.LongVULmmsEvalModel, "_load", lambda self, *a: (model, FakeProcessor()))
    return integration.LongVULmmsEvalModel(pretrained="folder", device="cpu", **arguments), model


def answer(lm, model):
    """One question through `_answer_batch`; returns what `generate` received."""
    request = types.SimpleNamespace(args=("ctx", None, {"until": ["\n"]}, 0, "task", "test"))
    item = types.SimpleNamespace(index=0, context="ctx", gen_kwargs={"max_new_tokens": 2}, videos=["v.mp4"], images=[])
    lm._streamed_inputs = lambda batch: None  # the processor's path (a video file is streamed in the real model)
    lm._processor_inputs = lambda batch: {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.ones(1, 2)}
    results = lm._answer_batch([item], [request])
    assert [r.text for r in results] == ["B"]
    return model.calls[-1]


@pytest.mark.parametrize("protocol", list(EXPECTED_PROTOCOLS))
def test_a_protocol_sets_its_official_thresholds_and_sampling(integration, monkeypatch, protocol):
    lm, model = build(integration, monkeypatch, protocol=protocol)
    thresholds, sampling = EXPECTED_PROTOCOLS[protocol]
    assert lm.sampling_kwargs == sampling
    assert answer(lm, model)["compression_settings"] == {**thresholds, "max_visual_tokens": None}
    assert answer(lm, model)["max_new_tokens"] == 2


def test_explicit_arguments_win_over_the_protocol(integration, monkeypatch):
    # lmms-eval passes model arguments as strings
    lm, model = build(integration, monkeypatch, protocol="mlvu", stc_threshold="0.5", dino_threshold="0.9",
                      max_context_length="4096", context_margin="8", max_visual_tokens="2000", fps="1",
                      max_frames="64")
    assert lm.sampling_kwargs == {"fps": 1.0, "max_frames": 64, "max_frames_mode": "stride"}
    assert answer(lm, model)["compression_settings"] == {
        "stc_threshold": 0.5, "dino_threshold": 0.9, "max_context_length": 4096, "context_margin": 8,
        "max_visual_tokens": 2000,
    }


def test_without_a_protocol_only_the_given_settings_are_passed(integration, monkeypatch):
    lm, model = build(integration, monkeypatch, stc_threshold=0.7, max_visual_tokens="None", fps="")
    assert lm.sampling_kwargs == {}
    assert answer(lm, model)["compression_settings"] == {"stc_threshold": 0.7, "max_visual_tokens": None}
    lm, model = build(integration, monkeypatch)
    assert answer(lm, model)["compression_settings"] == {"max_visual_tokens": None}  # the model's own config


def test_settings_out_of_range_end_the_run_before_any_question(integration, monkeypatch):
    with pytest.raises(integration.LongVUEvaluationError, match="max_visual_tokens 0: must be at least 1"):
        build(integration, monkeypatch, max_visual_tokens="0")
    with pytest.raises(integration.LongVUEvaluationError, match="context_margin -1: must be 0 or more"):
        build(integration, monkeypatch, context_margin="-1")


def test_unknown_arguments_and_protocols_end_the_run(integration, monkeypatch):
    with pytest.raises(integration.LongVUEvaluationError, match="unknown model arguments"):
        build(integration, monkeypatch, drop_threshold=0.5)
    with pytest.raises(integration.LongVUEvaluationError, match="Unknown benchmark"):
        build(integration, monkeypatch, protocol="videomm")


def test_streamed_batch_equals_the_processor_path(integration, monkeypatch, tmp_path):
    """Video files are streamed into the towers by the library's session (one per video) and the prompts tokenized by
    `longvu_hf.chat`; `generate` then answers a left-padded batch exactly as on the processor's one-shot inputs."""
    from longvu_hf import LongVUProcessor, LongVUVideoProcessor
    from longvu_hf.tiny import tiny_model, tiny_tokenizer, write_scene_clip

    tokenizer = tiny_tokenizer()
    model, processor = tiny_model(tokenizer), LongVUProcessor(tokenizer, LongVUVideoProcessor())
    monkeypatch.setattr(integration.LongVULmmsEvalModel, "_load", lambda self, *a: (model, processor))
    lm = integration.LongVULmmsEvalModel(pretrained="folder", device="cpu", fps="2", max_visual_tokens="300")
    clips = [write_scene_clip(tmp_path / f"clip{i}.mp4", seconds=3 + 2 * i, fps=4, width=64, height=36, seed=i)
             for i in range(2)]
    batch = [integration.PreparedRequest(
        index=i, context="", gen_kwargs={}, videos=[str(clip)],
        messages=[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}])
        for i, (clip, question) in enumerate(zip(clips, ["What is happening in this video ?", "Describe it"]))]
    streamed, one_shot = lm._streamed_inputs(batch), lm._processor_inputs(batch)
    assert streamed["input_ids"].tolist() == one_shot["input_ids"].tolist()
    settings = {"max_new_tokens": 4, "do_sample": False, "compression_settings": lm.compression_settings}
    with torch.no_grad():
        assert model.generate(**streamed, **settings).tolist() == model.generate(**one_shot, **settings).tolist()
