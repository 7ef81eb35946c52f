"""Benchmark evaluation: loaders on tiny fixtures in each official release layout, answer parsing on real-world answer
strings, scoring with fixed predictions, and the command line end to end with a tiny model (resume, errors, two
processes, the lmms-eval chat path)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_tokenizer, make_video
from longvu_hf.evaluation import (
    BENCHMARK_ACCURACY_PATH,
    build_report,
    extract_answer_letter,
    extract_answer_letter_reference,
    get_protocol,
    load_benchmark,
)
from longvu_hf.evaluation.benchmarks import MLVU_TASKS, MVBENCH_TASKS
from longvu_hf.evaluation.records import pending_ids, read_records, shard_file
from longvu_hf.evaluation.sampling import frame_folder_indices, read_srt, select_subtitles, video_sampling_kwargs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "evaluate_benchmarks.py"


def load_script():
    spec = importlib.util.spec_from_file_location("evaluate_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: a tiny checkpoint and tiny datasets in each official layout
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny random LongVU model + processor saved like a converted checkpoint."""
    from longvu_hf import LongVUProcessor, LongVUVideoProcessor
    from tiny_model import make_tiny_model

    tokenizer = make_tiny_tokenizer()
    path = tmp_path_factory.mktemp("checkpoint")
    make_tiny_model(tokenizer).save_pretrained(path)
    LongVUProcessor(tokenizer, LongVUVideoProcessor()).save_pretrained(path)
    return str(path)


def tiny_video(path: Path, num_frames: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_video(path, fps=4, num_frames=num_frames, width=64, height=36)


SRT = """1
00:00:00,000 --> 00:00:01,500
the red square

2
00:00:01,500 --> 00:00:02,500
moves to the right

3
00:00:02,500 --> 00:00:03,000
[Music]
"""


def write_videomme(root: Path) -> Path:
    """lmms-lab/Video-MME: videomme/test-00000-of-00001.parquet, data/<videoID>.mp4, subtitle/<videoID>.srt.
    The long video is missing on purpose."""
    import datasets

    def question(video_id, number, duration, answer):
        return {
            "video_id": video_id, "duration": duration, "domain": "Knowledge", "sub_category": "Humanity & History",
            "url": f"https://www.youtube.com/watch?v=yt{video_id}", "videoID": f"yt{video_id}",
            "question_id": f"{video_id}-{number}", "task_type": "Action Recognition",
            "question": "What is happening in this video?",
            "options": ["A. red square", "B. it moves left", "C. it moves right", "D. up"], "answer": answer,
        }

    rows = [question("001", 1, "short", "C"), question("001", 2, "short", "A"), question("002", 1, "medium", "C"),
            question("003", 1, "long", "B")]
    (root / "videomme").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(root / "videomme" / "test-00000-of-00001.parquet"))
    tiny_video(root / "data" / "yt001.mp4")
    tiny_video(root / "data" / "yt002.mp4")
    (root / "subtitle").mkdir()
    (root / "subtitle" / "yt001.srt").write_text(SRT)
    return root


def write_mvbench(root: Path, tasks=("action_sequence", "action_antonym", "episodic_reasoning"), per_task=1) -> Path:
    """OpenGVLab/MVBench: json/<task>.json and video/<source folder>/..., TVQA as 3-fps JPEG folders."""
    from PIL import Image

    from conftest import frame_pattern

    (root / "json").mkdir(parents=True)
    for task in MVBENCH_TASKS:
        stem = task.annotation[: -len(".json")]
        if stem not in tasks:
            continue
        folder = root / "video" / task.folder
        if task.kind == "frames":
            for frame in range(1, 10):
                (folder / "clip0").mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame_pattern(frame, 64, 36)).save(folder / "clip0" / f"{frame:05d}.jpg")
            video = "clip0"
        else:
            video = f"{stem}.mp4"
            tiny_video(folder / video)
        record = {"video": video, "question": "What is happening?", "candidates": ["up", "down", "left"],
                  "answer": "down"}
        if task.has_clip:
            record.update(start=0.5, end=2.5)
        records = [record, dict(record, answer="left")][:per_task]
        (root / "json" / task.annotation).write_text(json.dumps(records))
    return root


def write_mlvu(root: Path, sizes=(2, 1, 1, 1, 1, 1, 1)) -> Path:
    """MLVU dev: json/<n>_<task>.json and video/<n>_<task>/<video>."""
    for (task, stem), size in zip(MLVU_TASKS.items(), sizes):
        tiny_video(root / "video" / stem / f"{task}.mp4")
        records = [{"video": f"{task}.mp4", "duration": 3.0, "question": "What is happening?",
                    "candidates": ["red", "up", "down", "left"], "answer": ["down", "up"][i % 2],
                    "question_type": task} for i in range(size)]
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "json" / f"{stem}.json").write_text(json.dumps(records))
    return root


def write_egoschema(root: Path) -> Path:
    """The official EgoSchema release: questions.json, subset_answers.json, good_clips_git/<q_uid>.mp4."""
    questions = [
        {"q_uid": f"uid-{i}", "google_drive_id": f"g{i}", "question": "What does c do?",
         **{f"option {k}": f"option text {k}" for k in range(5)}}
        for i in range(3)
    ]
    root.mkdir(parents=True)
    (root / "questions.json").write_text(json.dumps(questions))
    (root / "subset_answers.json").write_text(json.dumps({"uid-0": 2, "uid-1": 4}))
    for i in range(3):
        tiny_video(root / "good_clips_git" / f"uid-{i}.mp4")
    return root


# ---------------------------------------------------------------------------------------------------------------------
# Answer parsing
# ---------------------------------------------------------------------------------------------------------------------

# (generation, strict parse, official-regex parse) for four options; real outputs of video LLMs at max_new_tokens=5.
ANSWER_TABLE = [
    ("A", "A", "A"),
    ("(B)", "B", "B"),
    ("C.", "C", "C"),
    ("D)", "D", "D"),
    ("[C]", "C", "C"),
    ("**B**", "B", "B"),
    ("\nC", "C", "C"),
    ("b", "B", None),
    ("(c)", "C", None),
    ("d.", "D", None),
    ("c) 3", "C", None),
    ("The answer is D", "D", "D"),
    ("the answer is c", "C", None),
    ("The best answer is: (A)", "A", "A"),
    ("Answer: B", "B", "B"),
    ("Answer: (a)", "A", None),
    ("Option D", "D", "D"),
    ("The correct answer is option B.", "B", "B"),
    ("I think the answer is C", "C", "C"),
    ("A. The man is", "A", "A"),
    ("B) pour water", "B", "B"),
    ("B: the red one", "B", "B"),
    ("C, because the", "C", "C"),
    ("Sure! B", "B", "B"),
    ("The man is cooking", "B", None),  # the exact text of option B
    ("The answer is", None, None),  # cut by max_new_tokens
    ("", None, None),
    ("I don't know", None, None),
    ("Based on the video", None, "B"),  # the official regex reads the B of "Based"
    ("a man is walking", None, None),  # an article, not option A
    ("E", None, None),  # out of range for four options
    ("Option (E)", None, None),
]


@pytest.mark.parametrize("text, strict, reference", ANSWER_TABLE)
def test_answer_extraction_table(text, strict, reference):
    options = ["a dog", "the man is cooking", "red", "blue"]
    assert extract_answer_letter(text, "ABCD", options) == strict
    assert extract_answer_letter_reference(text, "ABCD", "videomme") == reference


def test_reference_parser_follows_each_official_script():
    assert extract_answer_letter_reference("E", "ABCDE", "egoschema") == "E"
    # MVBench's letters come from the candidates; its regex keeps a trailing comma, which is then not a letter.
    assert extract_answer_letter_reference("(B), yes", "ABC", "mvbench") is None
    assert extract_answer_letter_reference("(B) yes", "ABC", "mvbench") == "B"
    assert extract_answer_letter_reference("D", "ABC", "mvbench") is None
    with pytest.raises(ValueError, match="Unknown benchmark"):
        extract_answer_letter_reference("A", "ABCD", "nextqa")


# ---------------------------------------------------------------------------------------------------------------------
# Scoring with fixed predictions
# ---------------------------------------------------------------------------------------------------------------------


def test_metric_module_loads_offline_by_path_and_scores_breakdowns():
    import evaluate

    for path in (BENCHMARK_ACCURACY_PATH, os.path.join(BENCHMARK_ACCURACY_PATH, "benchmark_accuracy.py")):
        metric = evaluate.load(path)
    # MLVU: M-avg is the mean over task types, not the overall accuracy (3 of 4 right on "count", 0 of 1 on "ego").
    result = metric.compute(
        predictions=["A", "B", "C", "", "A"],
        references=["A", "B", "C", "D", "B"],
        categories=["count", "count", "count", "count", "ego"],
        benchmark="mlvu",
        expected_categories=["count", "ego", "needle"],
    )
    assert result["accuracy"] == pytest.approx(60.0)
    assert result["per_category"]["count"] == {"accuracy": 75.0, "num_samples": 4, "num_correct": 3}
    assert result["per_category"]["needle"] == {"accuracy": None, "num_samples": 0, "num_correct": 0}
    assert result["category_mean"] == pytest.approx(37.5)
    assert result["score"] == pytest.approx(37.5) and result["score_name"].startswith("M-avg")
    # VideoMME and EgoSchema report the overall accuracy; MVBench the mean over its tasks.
    kwargs = dict(predictions=["A", "b", "C"], references=["A", "B", "D"], categories=["short", "short", "long"])
    assert metric.compute(benchmark="videomme", **kwargs)["score"] == pytest.approx(200 / 3)
    assert metric.compute(benchmark="mvbench", **kwargs)["score"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="reference"):
        metric.compute(predictions=["A"], references=[""])


def record(question_id, answer, output, reference, robust, category="short", error=None, **extra):
    base = {"id": question_id, "category": category, "answer": answer}
    if error:
        return base | {"error": error}
    return base | {"output": output, "parsed": {"reference": reference, "robust": robust}, "frames_sampled": 4,
                   "frames_kept": 3, "frames_high_res": 3, "visual_tokens": 100, "compression_path": "none"} | extra


def test_report_scores_protocols_and_excludes_errors():
    records = [
        record("q1", "A", "A", "A", "A"),
        record("q2", "C", "Based on", "B", None),  # official regex: B (wrong); strict: unparsable (wrong)
        record("q3", "C", "hmm", None, None, category="long"),  # reference falls back to "C" (right)
        record("q4", "B", None, None, None, category="long", error="FileNotFoundError: Video not found: x.mp4"),
    ]
    settings = {"model": "m"}
    strict = build_report(records, get_protocol("videomme", "strict"), settings, ["short", "medium", "long"])
    assert strict["counts"] | {} == {
        "questions": 4, "answered": 3, "errors": 1, "scored": 3, "correct": 1, "without_reference_answer": 0,
        "unparsable": 2, "fallback_used": 0, "with_subtitles": 0,
    }
    assert strict["accuracy"] == pytest.approx(100 / 3) and strict["score"] == strict["accuracy"]
    assert strict["breakdown"]["by"] == "duration"
    assert strict["breakdown"]["categories"]["long"] == {"accuracy": 0.0, "num_samples": 1, "num_correct": 0}
    assert strict["breakdown"]["categories"]["medium"]["num_samples"] == 0
    assert strict["other_protocols"]["reference"]["accuracy"] == pytest.approx(200 / 3)
    assert strict["errors"] == [{"id": "q4", "error": "FileNotFoundError: Video not found: x.mp4"}]
    assert strict["complete"] is False
    assert strict["compression"]["frames_kept"] == {"mean": 3, "min": 3, "max": 3, "total": 9}
    reference = build_report(records, get_protocol("videomme", "reference"), settings, ["short", "medium", "long"])
    assert reference["accuracy"] == pytest.approx(200 / 3) and reference["counts"]["fallback_used"] == 1


# ---------------------------------------------------------------------------------------------------------------------
# Sampling and subtitles
# ---------------------------------------------------------------------------------------------------------------------


def official_indices(num_frames, avg_fps, sample_fps, cap=None, clip=None, round_first=True):
    """The official scripts' arithmetic, written out (eval_videomme/mlvu/egoschema/mvbench)."""
    fps = round(avg_fps) if round_first else avg_fps
    step = round(fps / sample_fps)
    if clip:
        indices = list(range(max(0, round(clip[0] * fps)), min(round(clip[1] * fps), num_frames - 1), step))
    else:
        indices = list(range(0, num_frames, step))
    if cap and len(indices) > cap:
        indices = [indices[i] for i in range(0, len(indices), len(indices) // cap)]
    return indices


@pytest.mark.parametrize(
    "benchmark, num_frames, avg_fps, clip",
    [
        ("videomme", 5400, 29.97, None),
        ("mlvu", 200_000, 30.0, None),  # 3334 sampled frames, capped by stride 3 to 1112 (the official quirk)
        ("egoschema", 5400, 30.0, None),
        ("mvbench", 300, 29.97, None),
        ("mvbench", 300, 25.0, (1.2, 7.9)),
    ],
)
def test_processor_sampling_matches_the_official_scripts(benchmark, num_frames, avg_fps, clip):
    from transformers.video_utils import VideoMetadata

    from longvu_hf import LongVUVideoProcessor

    protocol = get_protocol(benchmark)
    metadata = VideoMetadata(total_num_frames=num_frames, fps=avg_fps, width=64, height=36)
    kwargs = video_sampling_kwargs(protocol, clip)
    sampled = LongVUVideoProcessor().sample_frames(metadata, **kwargs).tolist()
    expected = official_indices(num_frames, avg_fps, protocol.sample_fps, protocol.frame_cap, clip,
                                round_first=benchmark != "mvbench")
    assert sampled == expected


def test_frame_folder_indices_follow_mvbench():
    assert frame_folder_indices(30, 3, 2, clip=(1.0, 4.0)) == [3, 5, 7, 9, 11]
    assert frame_folder_indices(9, 3, 2) == [1, 3, 5, 7]  # no bounds: from 00001.jpg to the frame count
    with pytest.raises(ValueError, match="holds no frame"):
        frame_folder_indices(9, 3, 2, clip=(5.0, 6.0))


def test_subtitles_follow_the_official_videomme_rules(tmp_path):
    path = tmp_path / "s.srt"
    path.write_text(SRT + "\n4\n00:00:03,000 --> 00:00:05,000\nmoves to the\n\n5\n00:00:05,000 --> 00:00:09,000\n"
                    "a new line\nsplit in two\n")
    lines = read_srt(str(path))
    assert [line.text for line in lines][-1] == "a new line split in two"
    # Frames at 0, 1, 2, 4, 6 s (fps 4): the cue must strictly contain the instant; [Music] is dropped, and so is a
    # cue contained in the previous one.
    text = select_subtitles(lines, [0, 4, 8, 16, 24], fps=4)
    assert text == "the red square\nmoves to the right\na new line split in two"
    many = [type(lines[0])(i * 1000, i * 1000 + 900, f"w{i}") for i in range(1000)]
    thinned = select_subtitles(many, [i * 4 + 1 for i in range(1000)], fps=4, count_tokens=len, token_limit=100)
    assert thinned.split("\n") == [f"w{i}" for i in range(0, 1000, 5)]


# ---------------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------------


def test_loaders_read_the_official_layouts(tmp_path):
    videomme = load_benchmark("videomme", str(write_videomme(tmp_path / "videomme")))
    assert videomme["id"] == ["001-1", "001-2", "002-1", "003-1"]
    assert videomme["category"] == ["short", "short", "medium", "long"]
    assert videomme[0]["options"] == ["red square", "it moves left", "it moves right", "up"]
    assert videomme[0]["prompt"].startswith("Question: What is happening in this video?\nOptions:\nA. red square\n")
    assert videomme[0]["prompt"].endswith("Respond with only the letter (A, B, C, or D) of the correct option.\n")
    assert videomme[0]["subtitle"].endswith("subtitle/yt001.srt") and videomme[2]["subtitle"] == ""

    # All 20 MVBench tasks, in the official order, with clip bounds and the TVQA frame folders.
    write_mvbench(tmp_path / "mvbench", tasks=[t.annotation[:-5] for t in MVBENCH_TASKS], per_task=2)
    mvbench = load_benchmark("mvbench", str(tmp_path / "mvbench"))
    assert len(mvbench) == 40 and list(dict.fromkeys(mvbench["category"])) == [t.name for t in MVBENCH_TASKS]
    first = mvbench[0]
    assert (first["id"], first["answer"], first["letters"], first["clip_start"], first["clip_end"]) == (
        "action_sequence/0", "B", "ABC", 0.5, 2.5)
    assert first["prompt"].endswith("(C) left\nAnswer with the option's letter from the given choices directly and "
                                    "only give the best option.")
    tvqa = mvbench.filter(lambda row: row["category"] == "Episodic Reasoning")[0]
    assert tvqa["video_kind"] == "frames" and tvqa["video"].endswith("tvqa/frames_fps3_hq/clip0")
    assert mvbench.filter(lambda row: row["category"] == "Action Antonym")[0]["clip_start"] is None
    assert len(load_benchmark("mvbench", str(tmp_path / "mvbench"), tasks=["Action Antonym", "state_change"])) == 4

    mlvu = load_benchmark("mlvu", str(write_mlvu(tmp_path / "mlvu")))
    assert list(dict.fromkeys(mlvu["category"])) == list(MLVU_TASKS) and mlvu["answer"][:2] == ["C", "B"]
    assert mlvu[0]["prompt"].endswith("(D) left\nRespond with only the letter (A, B, C or D) of the correct option.")

    egoschema = load_benchmark("egoschema", str(write_egoschema(tmp_path / "egoschema")))
    assert egoschema["id"] == ["uid-0", "uid-1"] and egoschema["answer"] == ["C", "E"]
    assert egoschema[0]["prompt"].startswith("Question: What does c do?\nOptions:\n(A) option text 0\n")
    full = load_benchmark("egoschema", str(tmp_path / "egoschema"), egoschema_subset_only=False)
    assert full["answer"] == ["C", "E", None]


def test_loaders_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_benchmark("mlvu", str(tmp_path / "nowhere"))
    write_mvbench(tmp_path / "mvbench")
    with pytest.raises(FileNotFoundError, match="action_prediction.json"):
        load_benchmark("mvbench", str(tmp_path / "mvbench"))
    with pytest.raises(ValueError, match="Unknown MVBench task"):
        load_benchmark("mvbench", str(tmp_path / "mvbench"), tasks=["juggling"])
    root = write_mlvu(tmp_path / "mlvu")
    bad = json.loads((root / "json" / "1_plotQA.json").read_text())
    bad[0]["answer"] = "sideways"
    (root / "json" / "1_plotQA.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="1_plotQA.json row 0: the answer 'sideways' is not one of"):
        load_benchmark("mlvu", str(root))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="Video-MME annotation"):
        load_benchmark("videomme", str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------------------------------
# The command line, end to end
# ---------------------------------------------------------------------------------------------------------------------


def check_report_against_predictions(report: dict, output: Path):
    """The report's numbers are those of the streamed predictions, under both protocols."""
    records = read_jsonl(output / "predictions.jsonl")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == report["counts"]["questions"]
    scored = [r for r in records if not r.get("error") and r.get("answer")]
    accuracy = {
        "strict": 100 * sum(r["parsed"]["robust"] == r["answer"] for r in scored) / len(scored),
        "reference": 100 * sum((r["parsed"]["reference"] or "C") == r["answer"] for r in scored) / len(scored),
    }
    name = report["protocol"]["name"]
    other = "reference" if name == "strict" else "strict"
    assert report["accuracy"] == pytest.approx(accuracy[name])
    assert report["other_protocols"][other]["accuracy"] == pytest.approx(accuracy[other])
    for r in records:
        if not r.get("error"):
            assert r["frames_sampled"] >= r["frames_kept"] >= 1 and r["visual_tokens"] > 0
            assert r["compression_path"] in ("none", "mix", "stc")


def test_videomme_end_to_end_with_subtitles_and_a_missing_video(tmp_path, checkpoint):
    script = load_script()
    data = write_videomme(tmp_path / "data")
    output = tmp_path / "out"
    args = ["--benchmark", "videomme", "--model", checkpoint, "--data-root", str(data), "--output", str(output),
            "--subtitles"]
    report = script.main(args)
    assert (output / "report.json").is_file() and json.loads((output / "report.json").read_text()) == report
    assert report["score_name"] == "overall accuracy" and report["run"]["subtitles"] is True
    assert report["protocol"]["name"] == "strict" and report["protocol"]["model_overrides"] == {"stc_threshold": 0.65}
    # The missing long video is an error, listed and left out of the scores; not a wrong answer.
    assert report["counts"]["errors"] == 1 and report["counts"]["scored"] == 3 and report["complete"] is False
    assert report["errors"][0]["id"] == "003-1" and "Video not found" in report["errors"][0]["error"]
    breakdown = report["breakdown"]["categories"]
    assert report["breakdown"]["by"] == "duration" and list(breakdown) == ["short", "medium", "long"]
    assert [breakdown[d]["num_samples"] for d in ("short", "medium", "long")] == [2, 1, 0]
    assert breakdown["long"]["accuracy"] is None
    assert report["counts"]["with_subtitles"] == 2  # the two questions on the video that has an .srt
    tokens = {r["id"]: r.get("prompt_tokens") for r in read_jsonl(output / "predictions.jsonl")}
    assert tokens["001-1"] > tokens["002-1"]  # same question, plus the subtitle preamble
    check_report_against_predictions(report, output)
    # 0.5 fps of a 3 s video at 4 fps: frames 0 and 8.
    assert report["compression"]["frames_sampled"]["max"] == 2

    # The video appears: running again answers only that question.
    tiny_video(data / "data" / "yt003.mp4")
    report = script.main(args)
    assert report["counts"]["errors"] == 0 and report["complete"] is True
    assert report["run"]["answered_before_this_run"] == 3
    assert len(read_jsonl(shard_file(str(output), 0))) == 5


def test_mvbench_end_to_end_clips_and_frame_folders(tmp_path, checkpoint):
    data = write_mvbench(tmp_path / "data")
    output = tmp_path / "out"
    report = load_script().main(
        ["--benchmark", "mvbench", "--model", checkpoint, "--data-root", str(data), "--output", str(output),
         "--protocol", "reference", "--tasks", "action_sequence", "action_antonym", "episodic_reasoning"]
    )
    assert report["counts"]["questions"] == 3 and report["counts"]["errors"] == 0
    assert report["breakdown"]["by"] == "task"
    assert list(report["breakdown"]["categories"]) == ["Action Sequence", "Action Antonym", "Episodic Reasoning"]
    assert report["score_name"] == "mean accuracy over tasks"
    assert report["score"] == pytest.approx(np.mean([c["accuracy"] for c in report["breakdown"]["categories"].values()]))
    # The reference protocol scores unparsable answers as "C".
    assert report["counts"]["fallback_used"] == report["counts"]["unparsable"]
    frames = {r["id"]: r["frames_sampled"] for r in read_jsonl(output / "predictions.jsonl")}
    # 2 fps of 4-fps videos: the clip (0.5 s, 2.5 s) holds frames 2, 4, 6, 8; the whole video 0, 2, ..., 10;
    # the TVQA folder (3 fps) gives 00002, 00004, 00006.jpg.
    assert frames == {"action_sequence/0": 4, "action_antonym/0": 6, "episodic_reasoning/0": 3}
    check_report_against_predictions(report, output)


def test_mlvu_resume_skips_finished_questions(tmp_path, checkpoint):
    script = load_script()
    data = write_mlvu(tmp_path / "data")
    output = tmp_path / "out"
    args = ["--benchmark", "mlvu", "--model", checkpoint, "--data-root", str(data), "--output", str(output)]
    first = script.main(args + ["--limit", "3"])
    assert first["counts"]["questions"] == 3
    streamed = Path(shard_file(str(output), 0))
    lines = streamed.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["plotQA/0", "plotQA/1", "needle/0"]
    # Interrupt the run in the middle of writing the third record: that question is answered again.
    streamed.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:25])
    report = script.main(args)
    new_lines = streamed.read_text().splitlines()
    assert new_lines[:3] == [lines[0], lines[1], lines[2][:25]]
    assert [json.loads(line)["id"] for line in new_lines[3:]] == [
        "needle/0", "ego/0", "count/0", "order/0", "anomaly_reco/0", "topic_reasoning/0"
    ]
    assert report["run"]["answered_before_this_run"] == 2 and report["counts"]["questions"] == 8
    assert report["score_name"].startswith("M-avg") and list(report["breakdown"]["categories"]) == list(MLVU_TASKS)
    assert report["breakdown"]["categories"]["plotQA"]["num_samples"] == 2
    check_report_against_predictions(report, output)
    # Results of other settings are never mixed into this folder.
    with pytest.raises(ValueError, match="other settings.*tasks"):
        script.main(args + ["--tasks", "count"])
    with pytest.raises(ValueError, match="not an evaluation output folder"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        script.main(args[:-1] + [str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_egoschema_end_to_end_subset_and_submission(tmp_path, checkpoint):
    script = load_script()
    data = write_egoschema(tmp_path / "data")
    report = script.main(["--benchmark", "egoschema", "--model", checkpoint, "--data-root", str(data),
                          "--output", str(tmp_path / "subset")])
    assert report["counts"]["scored"] == 2 and report["breakdown"] is None and "submission_file" not in report
    assert report["protocol"]["model_overrides"] == {"stc_threshold": 0.8}
    full = script.main(["--benchmark", "egoschema", "--model", checkpoint, "--data-root", str(data),
                        "--output", str(tmp_path / "full"), "--egoschema-full"])
    assert full["counts"]["questions"] == 3 and full["counts"]["scored"] == 2
    assert full["counts"]["without_reference_answer"] == 1
    rows = Path(full["submission_file"]).read_text().splitlines()
    assert rows[0] == "q_uid,answer" and len(rows) == 2 and rows[1].startswith("uid-2,")
    assert -1 <= int(rows[1].split(",")[1]) <= 4


def test_shards_merge_and_pending(tmp_path):
    ids = [f"q{i}" for i in range(5)]
    for process, chunk in ((0, ids[:3]), (1, ids[3:])):
        with open(shard_file(str(tmp_path), process), "w") as handle:
            for question_id in chunk:
                handle.write(json.dumps({"id": question_id, "error": "boom" if question_id == "q1" else None}) + "\n")
    records = read_records(str(tmp_path))
    assert sorted(records) == ids
    assert pending_ids(ids + ["q5"], records) == ["q1", "q5"]
    assert pending_ids(ids + ["q5"], records, retry_errors=False) == ["q5"]


def test_two_processes_with_accelerate_launch(tmp_path, checkpoint):
    data = write_mlvu(tmp_path / "data")
    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(SCRIPT), "--benchmark", "mlvu", "--model", checkpoint, "--data-root", str(data), "--output", str(output),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = [read_jsonl(shard_file(str(output), process)) for process in (0, 1)]
    assert [len(shard) for shard in shards] == [4, 4]  # 8 questions split between the two processes
    merged = read_jsonl(output / "predictions.jsonl")
    assert [r["id"] for r in merged] == [r["id"] for r in shards[0] + shards[1]]
    assert {r["process_index"] for r in merged} == {0, 1}
    report = json.loads((output / "report.json").read_text())
    assert report["run"]["num_processes"] == 2 and report["counts"]["questions"] == 8
    check_report_against_predictions(report, output)


# ---------------------------------------------------------------------------------------------------------------------
# lmms-eval's generic transformers path
# ---------------------------------------------------------------------------------------------------------------------


def lmms_eval_generate(checkpoint: str, video: str, max_new_tokens: int = 3, images=None):
    """What lmms-eval's `huggingface` model does (lmms_eval/models/chat/huggingface.py), batch size 1: the chat
    template renders the text, `processor(text=..., videos=[path])` builds the inputs, `generate` answers."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    import longvu_hf  # noqa: F401

    config = AutoConfig.from_pretrained(checkpoint)
    # lmms-eval picks the class from the Auto mappings (docs/evaluation.md notes its `model_type` lookup).
    assert type(config) in AutoModelForImageTextToText._model_mapping.keys()
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    messages = [{"role": "user", "content": [{"type": "video", "video": video},
                                             {"type": "text", "text": "What is happening in this video ?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=images, videos=[video], padding=True, padding_side="right",
                       return_tensors="pt")
    tokenizer = processor.tokenizer
    output = model.generate(**inputs, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            do_sample=False, temperature=None, top_p=None, num_beams=1,
                            max_new_tokens=max_new_tokens, use_cache=True)
    return text, inputs, output, processor


def test_lmms_eval_chat_path_builds_inputs_and_generates(tmp_path, checkpoint):
    video = str(tiny_video(tmp_path / "clip.mp4"))
    text, inputs, output, processor = lmms_eval_generate(checkpoint, video)
    assert text.count("<video>") == 1 and "<video>\nWhat is happening in this video ?" in text
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == 1
    assert inputs["video_num_frames"].tolist() == [3]  # the processor's own default: 1 fps of a 3 s clip
    assert output.shape[0] == 1 and output.shape[1] > inputs["input_ids"].shape[1]
    answer = processor.batch_decode(output[:, -3:], skip_special_tokens=True)[0]
    assert "<video>" not in answer and answer.strip()


def test_lmms_eval_empty_image_list_is_accepted(tmp_path, checkpoint):
    video = str(tiny_video(tmp_path / "clip.mp4"))
    _, inputs, _, _ = lmms_eval_generate(checkpoint, video, images=[])
    assert "pixel_values" not in inputs


def test_lmms_eval_trimming_keeps_only_the_answer(tmp_path, checkpoint):
    video = str(tiny_video(tmp_path / "clip.mp4"))
    _, inputs, output, processor = lmms_eval_generate(checkpoint, video, max_new_tokens=3)
    trimmed = [out[len(ids):] for ids, out in zip(inputs["input_ids"], output)]
    answers = processor.batch_decode(trimmed, skip_special_tokens=True)
    assert answers == processor.batch_decode(output[:, -3:], skip_special_tokens=True)


def test_questions_on_one_video_share_its_encoding(tmp_path, checkpoint, monkeypatch):
    """The predictor encodes a video once for its questions (the runner orders them by video); the records equal
    those of encoding the video again for every question."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from longvu_hf.evaluation import VideoQAPredictor, get_protocol, load_benchmark

    data = write_videomme(tmp_path / "data")
    dataset = load_benchmark("videomme", str(data)).filter(lambda row: not row["id"].startswith("003"))
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    predictor = VideoQAPredictor(model, processor, get_protocol("videomme", "strict"), subtitles=True)
    calls = []
    for name in ("encode_videos", "encode_video_stream"):  # video files are streamed into the towers
        encode = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *a, _name=name, _encode=encode, **k: calls.append(_name) or _encode(*a, **k))
    shared = [predictor(row) for row in dataset]
    assert calls == ["encode_video_stream"] * len(set(dataset["video"])) and len(calls) < len(dataset)
    fresh = []
    for row in dataset:
        predictor._session = None  # forget the previous video's encoding
        fresh.append(predictor(row))
    assert shared == fresh and all(not record.get("error") for record in shared)
