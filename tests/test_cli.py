"""The `longvu` command: ask, report (PNG/HTML + JSON equal to the model's own compression report), demo, bad input.

A tiny random model folder (tiny model + processor with the tiny tokenizer) is saved once per module; the main paths
run as real subprocesses (`python -m longvu_hf.cli`), the many bad-input cases in-process through `main(argv)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from longvu_hf import LongVUProcessor, LongVUVideoProcessor
from longvu_hf import cli
from longvu_hf.modeling.compression_report import CompressionReport
from longvu_hf.report import build_report, frame_table
from longvu_hf.session import BudgetError, VideoSession, plan_budget

from conftest import make_tiny_tokenizer
from tiny_model import make_tiny_model

QUESTION = "What is happening in this video ?"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def video(workdir):
    # 6 s at 8 fps of static scenes with a moving square (the demo's generator): 6 frames at the default 1 fps, 48 at
    # --fps 8, with near-duplicates for DINO selection to drop.
    return cli.write_demo_clip(workdir / "clip.mp4", seconds=6, fps=8, width=64, height=36)


@pytest.fixture(scope="module")
def model_dir(workdir):
    tokenizer = make_tiny_tokenizer()
    folder = workdir / "tiny-longvu"
    make_tiny_model(tokenizer).save_pretrained(folder)
    LongVUProcessor(tokenizer, LongVUVideoProcessor()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    """The same folder loaded the way the command loads it."""
    model, processor = cli.load_model_and_processor(model_dir, str(model_dir), "cpu", "auto", quiet=True)
    return model, processor


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(SRC), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "longvu_hf.cli", *map(str, args)],
        capture_output=True, text=True, env=environment, timeout=300,
    )


def model_inputs(processor, video, fps=None, num_frames=None):
    """The processor's one-shot inputs for the chat prompt with the video (the reference the command must match)."""
    content = [{"type": "video", "path": str(video)}, {"type": "text", "text": QUESTION}]
    messages = [{"role": "user", "content": content}]
    options = {key: value for key, value in (("fps", fps), ("num_frames", num_frames)) if value is not None}
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", processor_kwargs={"return_metadata": True, **options})
    metadata = inputs.pop("video_metadata")
    return inputs, [float(t) for t in metadata[0].timestamps]


def expected_compression(
    model, processor, video, fps, max_context_length=None, max_visual_tokens=None, generate=False
):
    """The model's own report (`forward`'s `compression`, or `generate`'s) under the same per-call budget as the
    command."""
    inputs, _ = model_inputs(processor, video, fps)
    prompt_tokens = int(inputs["attention_mask"].sum()) - 1
    settings = plan_budget(model.config, prompt_tokens, {"max_context_length": max_context_length,
                                                         "max_visual_tokens": max_visual_tokens}).settings
    with torch.no_grad():
        if generate:
            output = model.generate(**inputs, max_new_tokens=3, do_sample=False, compression_settings=settings,
                                    return_dict_in_generate=True)
            return output.compression[0]
        return model(**inputs, compression_settings=settings).compression[0]


# ----------------------------------------------------------------------------------------------------------------------
# ask
# ----------------------------------------------------------------------------------------------------------------------


def test_ask_streams_the_greedy_answer(model_dir, video, loaded):
    done = run_cli("ask", video, QUESTION, "--model", model_dir, "--max-new-tokens", "5", "--fps", "2")
    assert done.returncode == 0, done.stderr
    model, processor = loaded
    inputs, _ = model_inputs(processor, video, 2.0)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    expected = processor.post_process_image_text_to_text(generated.sequences, prompt_input_ids=inputs["input_ids"])[0]
    assert done.stdout.strip() == expected.strip()
    assert expected.strip(), "the tiny model should say something"
    # the summary on stderr comes from the model's report
    report = generated.compression[0]
    assert f"{report.num_input_frames} sampled frames (2 fps)" in done.stderr
    assert f"{report.num_visual_tokens} visual tokens for a budget of {report.budget}" in done.stderr


def test_decoding_bar_counts_the_sampled_frames(loaded, video, monkeypatch):
    class RecordingBar:
        def __init__(self, **kwargs):
            self.total, self.n, self.closed = kwargs.get("total"), 0, False

        def update(self, n=1):
            self.n += n

        def close(self):
            self.closed = True

    bars = []
    monkeypatch.setattr(cli.progress, "_bar", lambda quiet, **kwargs: bars.append(RecordingBar(**kwargs)) or bars[-1])
    model, processor = loaded
    with cli.progress.ProgressBars(quiet=False) as progress:
        VideoSession.open(model, processor, str(video), fps=2.0, progress=progress)
    decoding, dino, siglip = (progress.bars[stage] for stage in ("decoding", "DINOv2 (all frames)",
                                                                   "SigLIP (kept frames)"))
    assert all(bar.closed for bar in bars) and len(bars) == 3
    assert decoding.n == decoding.total == dino.n == dino.total == 12
    assert 0 < siglip.n <= 12


def test_ask_quiet_prints_only_the_answer(model_dir, video, capsys):
    assert cli.main(["ask", str(video), QUESTION, "--model", str(model_dir), "--max-new-tokens", "3", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.strip()


# ----------------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------------


def test_report_png_and_json_equal_the_model_report(model_dir, video, loaded, workdir):
    out, js = workdir / "report.png", workdir / "report.json"
    done = run_cli(
        "report", video, QUESTION, "--model", model_dir, "--out", out, "--json", js, "--fps", "8",
        "--max-context-length", "400", "--max-new-tokens", "0",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(js.read_text())
    model, processor = loaded
    expected = expected_compression(model, processor, video, 8.0, max_context_length=400)
    assert report["compression"] == expected.to_dict()
    # this setting exercises frame selection and token compression, not the trivial path
    assert expected.frame_selection_ran and expected.path in ("mix", "stc")
    assert len(expected.kept_frame_indices) < expected.num_input_frames == 48
    frames = report["frames"]
    assert [f["index"] for f in frames if f["kept"]] == expected.kept_frame_indices
    assert sum(f["tokens"] for f in frames) == expected.num_visual_tokens == report["budget"]["visual_tokens"]
    assert report["budget"]["max_context_length"] == 400 and report["answer"] is None
    assert report["random_weights"] is False
    assert frames[8]["time_s"] == pytest.approx(1.0)  # frame 8 of 8-fps sampling
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width == 1280 and image.height > 500
    # nothing else was left next to the outputs
    assert not [p for p in workdir.iterdir() if p.name.endswith(".part")]


def test_report_html_with_answer_and_visual_token_cap(model_dir, video, loaded, workdir):
    out, js = workdir / "capped.html", workdir / "capped.json"
    argv = ["report", str(video), QUESTION, "--model", str(model_dir), "--out", str(out), "--json", str(js),
            "--fps", "8", "--max-visual-tokens", "300", "--max-new-tokens", "3", "-q"]
    assert cli.main(argv) == 0
    report = json.loads(js.read_text())
    model, processor = loaded
    # the answer path (generate) reports what generate's output holds for the same call
    assert report["compression"] == expected_compression(model, processor, video, 8.0, max_visual_tokens=300,
                                                         generate=True).to_dict()
    assert report["compression"]["budget"] == 300 >= report["compression"]["num_visual_tokens"]
    assert report["budget"]["max_visual_tokens"] == 300 and report["answer"] is not None
    assert model.config.max_context_length == 1024, "the per-call budget must not stick to the model"
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page and QUESTION in page


def test_report_refuses_to_overwrite(model_dir, video, workdir):
    existing = workdir / "keep.png"
    existing.write_bytes(b"user data")
    argv = ["report", str(video), QUESTION, "--model", str(model_dir), "--out", str(existing)]
    assert cli.main(argv) == 2
    assert existing.read_bytes() == b"user data"


def test_interrupted_report_leaves_no_file(model_dir, video, tmp_path, monkeypatch, capsys):
    import longvu_hf.report as report_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module.os, "replace", interrupt)
    argv = ["report", str(video), QUESTION, "--model", str(model_dir), "--out", str(tmp_path / "r.png"),
            "--json", str(tmp_path / "r.json"), "--max-new-tokens", "0", "-q"]
    assert cli.main(argv) == cli.EXIT_INTERRUPTED
    assert list(tmp_path.iterdir()) == []
    assert "interrupted" in capsys.readouterr().err


def test_frame_table_is_a_relayout_of_the_report():
    compression = {"num_input_frames": 5, "kept_frame_indices": [1, 3, 4], "high_res_frame_indices": [3],
                   "tokens_per_frame": [40, 84, 0], "path": "mix", "num_visual_tokens": 124, "budget": 130,
                   "frame_selection_ran": True, "stc_force_remove": 0}
    rows = frame_table(compression, [0.0, 0.5, 1.0, 1.5, 2.0])
    assert [(r["kept"], r["high_res"], r["tokens"]) for r in rows] == [
        (False, False, 0), (True, False, 40), (False, False, 0), (True, True, 84), (True, False, 0)]
    with pytest.raises(ValueError, match="tokens_per_frame"):
        frame_table(dict(compression, tokens_per_frame=[1]))
    report = build_report(compression, video="v.mp4", question="q", model_name="m", fps=2.0)
    assert report["compression"] == compression and report["frames"][3]["time_s"] == 1.5
    json.dumps(report)  # the typed report is stored as JSON
    assert build_report(CompressionReport.from_dict(compression), video="v.mp4", question="q", model_name="m",
                        fps=2.0) == report


# ----------------------------------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------------------------------


def test_demo_runs_offline(tmp_path):
    out, js = tmp_path / "demo.png", tmp_path / "demo.json"
    done = run_cli("demo", "--out", out, "--json", js, "--max-new-tokens", "3")
    assert done.returncode == 0, done.stderr
    assert "RANDOM WEIGHTS" in done.stderr and "answer (random weights)" in done.stdout
    report = json.loads(js.read_text())
    assert report["random_weights"] is True
    compression = report["compression"]
    # the demo's clip and budget go through DINO selection and query-based mixing
    assert compression["frame_selection_ran"] and compression["path"] == "mix"
    assert 0 < len(compression["high_res_frame_indices"]) < len(compression["kept_frame_indices"])
    with Image.open(out) as image:
        assert image.format == "PNG"


# ----------------------------------------------------------------------------------------------------------------------
# token budget
# ----------------------------------------------------------------------------------------------------------------------


def test_plan_budget_and_per_call_override(loaded):
    model, _ = loaded
    config = model.config
    budget = plan_budget(config, prompt_tokens=30)
    assert budget.max_context_length == 1024 and budget.visual_budget == 1024 - 30 - 16
    capped = plan_budget(config, 30, {"max_visual_tokens": 100})
    assert capped.max_context_length == 1024 and capped.visual_budget == 100
    # a cap above what the context leaves changes nothing
    assert plan_budget(config, 30, {"max_visual_tokens": 10_000}).visual_budget == 1024 - 30 - 16
    with pytest.raises(BudgetError, match="at least 47"):
        plan_budget(config, 30, {"max_context_length": 46})
    for settings, message in (({"max_visual_tokens": 0}, "--max-visual-tokens 0: must be at least 1"),
                              ({"context_margin": -1}, "--context-margin -1: must be 0 or more"),
                              ({"max_context_length": 0}, "--max-context-length 0: must be a positive")):
        with pytest.raises(BudgetError) as refused:
            plan_budget(config, 30, settings)
        assert refused.value.describe(cli.errors.option_name).startswith(message)
    small = plan_budget(config, 30, {"max_context_length": 200, "context_margin": 4}).settings
    assert (small.max_context_length, small.context_margin) == (200, 4)
    assert (config.max_context_length, config.context_margin) == (1024, 16)  # the config is never changed


# ----------------------------------------------------------------------------------------------------------------------
# bad input: one line with the fix, exit status 2
# ----------------------------------------------------------------------------------------------------------------------


def test_unknown_video_in_a_subprocess(model_dir, tmp_path):
    done = run_cli("ask", tmp_path / "missing.mp4", QUESTION, "--model", model_dir)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"longvu ask: error: video {tmp_path / 'missing.mp4'}: no such file "
                                                "or folder; check the path (or give an http(s) URL)"]
    assert done.stdout == ""


def _official_format(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "cambrian_qwen"}))
    return folder


def _other_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return folder


def _no_weights(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "longvu"}))
    return folder


def _copy_of(model_dir: Path, folder: Path) -> Path:
    import shutil

    return Path(shutil.copytree(model_dir, folder))


def _truncated_weights(model_dir: Path, folder: Path) -> Path:
    folder = _copy_of(model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def _pickle_weights(model_dir: Path, folder: Path) -> Path:
    folder = _copy_of(model_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"never": torch.zeros(1)}, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize(
    "make_model, expected",
    [
        (lambda tmp, model_dir: str(_truncated_weights(model_dir, tmp / "truncated")),
         "cannot load its weights (SafetensorError"),
        (lambda tmp, model_dir: str(_pickle_weights(model_dir, tmp / "pickled")),
         "only safetensors are loaded"),
    ],
    ids=["truncated-weights", "pickle-weights"],
)
def test_broken_weights_are_one_line(make_model, expected, model_dir, video, tmp_path, capsys):
    assert cli.main(["ask", str(video), QUESTION, "--model", make_model(tmp_path, model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_url_videos_are_resolved_before_the_model_loads(model_dir, capsys):
    # A URL is fetched by check_video (longvu_hf.media_inputs); a host that does not resolve ends in one line
    # naming the URL (tests/test_media_inputs.py covers downloads, refusals and "not a video").
    url = "https://example.invalid/clip.mp4"
    with pytest.raises(cli.CLIError, match="example.invalid"):
        cli.check_video(url)
    assert cli.main(["ask", url, QUESTION, "--model", str(model_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "no such file" not in err[0], err


def test_num_frames_option_and_its_exclusion_with_fps(loaded, video, capsys):
    model, processor = loaded
    assert VideoSession.open(model, processor, str(video), num_frames=3).info.num_frames == 3
    assert cli.main(["ask", str(video), QUESTION, "--fps", "1", "--num-frames", "3"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_demo_save_writes_a_model_the_commands_load(tmp_path, video, capsys):
    folder = tmp_path / "tiny"
    assert cli.main(["demo", "--save", str(folder)]) == 0
    assert cli.main(["ask", str(video), QUESTION, "--model", str(folder), "--quiet", "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    assert cli.main(["demo", "--save", str(folder)]) == 2  # never over an existing model
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make_model, expected",
    [
        (lambda tmp: str(tmp / "nowhere"), "no such folder"),
        (lambda tmp: str(tmp), "no config.json"),
        (lambda tmp: str(_official_format(tmp / "LongVU_Qwen2_7B")), "convert it first: longvu convert --checkpoint"),
        (lambda tmp: str(_other_model(tmp / "bert")), "model_type='bert', not a LongVU checkpoint"),
        (lambda tmp: str(_no_weights(tmp / "empty")), "no weights"),
        (lambda tmp: "someone/not-cached", "not downloadable from the Hugging Face Hub"),
        (lambda tmp: "Vision-CAIR/LongVU_Qwen2_7B", "not converted yet and HF_HUB_OFFLINE is set"),
    ],
    ids=["missing-folder", "not-a-model-folder", "official-unconverted", "other-model", "no-weights", "hub-offline",
         "official-offline"],
)
def test_bad_model(make_model, expected, video, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    assert cli.main(["ask", str(video), QUESTION, "--model", make_model(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--max-context-length", "20"], "leaves no room for the video"),
        (["--max-visual-tokens", "0"], "must be at least 1"),
        (["--context-margin", "-1"], "must be 0 or more"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    ],
    ids=["budget-smaller-than-prompt", "no-visual-tokens", "negative-margin", "bad-device"],
)
def test_bad_budget_or_device(extra, expected, model_dir, video, capsys):
    assert cli.main(["ask", str(video), QUESTION, "--model", str(model_dir), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_bad_video_file_and_outputs(model_dir, tmp_path, video, capsys):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    assert cli.main(["ask", str(not_a_video), QUESTION, "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.mp4': not a video" in err[0], err  # refused by check_video, before the model
    for out, expected in ((tmp_path / "r.jpg", "must end with .png or .html"),
                          (tmp_path / "missing" / "r.png", "does not exist")):
        assert cli.main(["report", str(video), QUESTION, "--model", str(model_dir), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    # usage errors also exit with 2, in one line
    assert cli.main(["report", str(video), QUESTION]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "longvu report --help" in err[0], err
    assert cli.main(["ask", str(video), QUESTION, "--max-new-tokens", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_convert_forwards_to_the_converter(tmp_path, capsys):
    # the converter's own validation answers (exit status 2, its one-line message)
    status = cli.main(["convert", "--checkpoint", str(tmp_path / "nope"), "--siglip", str(tmp_path),
                       "--dino", str(tmp_path), "--output", str(tmp_path / "out")])
    assert status == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert cli.main(["convert", "--help"]) == 0
    assert "--siglip" in capsys.readouterr().out


def test_lora_adapter_folder_loads_on_its_base(model_dir, video, tmp_path, capsys):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter_dir = tmp_path / "adapter"
    adapted.save_pretrained(adapter_dir)  # adapter_config.json names model_dir as its base
    model, processor = cli.load_model_and_processor(adapter_dir, str(adapter_dir), "cpu", "auto", quiet=True)
    expected = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model_dir), adapter_dir)
    inputs, _ = model_inputs(processor, video, 1.0)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected.merge_and_unload()(**inputs).logits)
        plain = AutoModelForImageTextToText.from_pretrained(model_dir)
        assert not torch.allclose(model(**inputs).logits, plain(**inputs).logits)  # the adapter does something
    assert cli.main(["ask", str(video), QUESTION, "--model", str(adapter_dir), "--quiet", "--max-new-tokens", "2"]) == 0


def test_several_questions_encode_the_video_once(model_dir, video, loaded, monkeypatch):
    questions = [QUESTION, "Describe the main events"]
    alone = [run_cli("ask", video, q, "--model", model_dir, "--max-new-tokens", "4", "--quiet").stdout.strip()
             for q in questions]
    together = run_cli("ask", video, *questions, "--model", model_dir, "--max-new-tokens", "4", "--quiet")
    assert together.returncode == 0, together.stderr
    assert together.stdout.strip().splitlines() == [f"[{i}] {answer}" for i, answer in enumerate(alone, start=1)]
    # in process: the video is streamed into the towers once for both questions, never encoded from pixels
    model, _ = loaded
    calls = []
    monkeypatch.setattr(cli.commands, "_load_for", lambda args: (model, loaded[1], "tiny"))
    for name in ("encode_videos", "encode_video_stream"):
        original = getattr(model, name)
        monkeypatch.setattr(model, name,
                            lambda *a, _name=name, _original=original, **k: calls.append(_name) or _original(*a, **k))
    assert cli.main(["ask", str(video), *questions, "--max-new-tokens", "2", "--quiet"]) == 0
    assert calls == ["encode_video_stream"]


def test_chat_reads_questions_from_stdin(model_dir, video):
    environment = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(SRC))
    done = subprocess.run(
        [sys.executable, "-m", "longvu_hf.cli", "chat", str(video), "--model", str(model_dir), "--max-new-tokens", "4",
         "--quiet"],
        input=f"{QUESTION}\nDescribe the main events\n\n", capture_output=True, text=True, env=environment, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answers = done.stdout.strip().splitlines()
    first = run_cli("ask", video, QUESTION, "--model", model_dir, "--max-new-tokens", "4", "--quiet").stdout.strip()
    assert len(answers) == 2 and answers[0] == first
