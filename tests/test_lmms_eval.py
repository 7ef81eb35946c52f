"""lmms-eval runs LongVU: the `--model longvu` plugin, through the real lmms-eval command line, on a tiny model folder
and a tiny local video task (`tests/fixtures/lmms_eval/make_tiny_task.py`), with the exact command of
`docs/evaluation.md`.

Checked: lmms-eval finds the model through our entry point; every question's answer equals the README's
`apply_chat_template(..., tokenize=True)` + `generate` answer for the same video, sampling and clip; two processes
answer the same; a run whose model fails (here: a missing video) exits with a non-zero status.
Also, without lmms-eval: the remote-code processor of a converted folder accepts lmms-eval's `audios=[]`.

The lmms-eval tests need lmms-eval installed (`pip install -e ".[dev,lmms-eval]"`; CI runs them in `.venv-lmms`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "evaluation.md"
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "lmms_eval"))
import make_tiny_task  # noqa: E402

DOCS_ROOT = "/tmp/longvu-lmms"  # the output folder the docs' commands use; replaced by a temporary one here
needs_lmms_eval = pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None,
    reason='lmms-eval is not installed (pip install -e ".[dev,lmms-eval]"; CI runs these tests in .venv-lmms)',
)


# ---------------------------------------------------------------------------------------------------------------------
# The command of docs/evaluation.md, and running it
# ---------------------------------------------------------------------------------------------------------------------


def docs_lmms_eval_command() -> list[str]:
    """The `lmms-eval ...` command of the docs' bash block that builds the tiny task (continuation lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.S)
    block = next(b for b in blocks if "make_tiny_task.py" in b)
    lines = block.replace("\\\n", " ").splitlines()
    command = next(line for line in lines if line.startswith("lmms-eval "))
    return shlex.split(command, comments=True)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def with_option(command: list[str], name: str, value: str) -> list[str]:
    command = list(command)
    command[command.index(name) + 1] = value
    return command


def model_args(command: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in option(command, "--model_args").split(","))


def lmms_eval_executable() -> list[str]:
    script = Path(sys.executable).parent / "lmms-eval"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from lmms_eval.cli.dispatch import main; main()"]


def run_lmms_eval(command: list[str], root: Path, processes: int = 1) -> subprocess.CompletedProcess:
    """Runs an `lmms-eval ...` command (as the docs write it) offline, with its own HF cache."""
    arguments = [argument.replace(DOCS_ROOT, str(root)) for argument in command[1:]]
    if processes == 1:
        argv = lmms_eval_executable() + arguments
    else:  # as the docs launch several processes: accelerate launch ... -m lmms_eval
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval",
                *arguments]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf_home"), CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false")
    if processes > 1:
        env["OMP_NUM_THREADS"] = "1"  # one thread per process: no oversubscription on small CI machines
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def answers_logged(output_path: Path) -> dict[int, str]:
    """doc_id -> the answer lmms-eval recorded (`--log_samples`)."""
    samples = list(output_path.glob(f"*/*_samples_{make_tiny_task.TASK_NAME}.jsonl"))
    assert len(samples) == 1, samples
    rows = [json.loads(line) for line in samples[0].read_text().splitlines() if line.strip()]
    return {row["doc_id"]: row["filtered_resps"] for row in rows}


def readme_path_answers(model_folder: Path, questions: Path, sampling: dict,
                        compression_settings: dict | None = None) -> dict[int, str]:
    """Our own path (README): the chat template with the video block, `processor_kwargs` for the sampling and the
    clip, `generate` (with `compression_settings`), the new tokens decoded."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import longvu_hf  # noqa: F401  (registers the Auto classes)

    model = AutoModelForImageTextToText.from_pretrained(model_folder).eval()
    processor = AutoProcessor.from_pretrained(model_folder)
    answers = {}
    for doc_id, line in enumerate(questions.read_text().splitlines()):
        row = json.loads(line)
        kwargs = dict(sampling)
        if row["clip_start"] is not None:
            kwargs.update(start_time=row["clip_start"], end_time=row["clip_end"])
        messages = [{"role": "user", "content": [{"type": "video", "path": row["video"]},
                                                 {"type": "text", "text": row["prompt"]}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt", processor_kwargs=kwargs)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=make_tiny_task.MAX_NEW_TOKENS, do_sample=False,
                                    compression_settings=compression_settings)
        answers[doc_id] = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def docs_sampling(command: list[str]) -> dict:
    """The processor sampling options among the command's model arguments."""
    numbers = {"fps": float, "max_frames": int, "num_frames": int}
    return {name: numbers[name](value) for name, value in model_args(command).items() if name in numbers}


def short(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-5000:]}"


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: the tiny model and task, and the docs' run on them
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("longvu-lmms")
    return {"root": root, **make_tiny_task.make_tiny_task(root)}


@pytest.fixture(scope="module")
def docs_run(tiny_task) -> subprocess.CompletedProcess:
    return run_lmms_eval(docs_lmms_eval_command(), tiny_task["root"])


# ---------------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------------


@needs_lmms_eval
def test_docs_command_answers_every_question_as_our_generate_path(tiny_task, docs_run):
    command = docs_lmms_eval_command()
    assert command[:3] == ["lmms-eval", "--model", "longvu"] and "--log_samples" in command
    assert docs_run.returncode == 0, short(docs_run)
    table_row = re.search(rf"^\|{make_tiny_task.TASK_NAME}\s*\|.*\|accuracy\|", docs_run.stdout, re.M)
    assert table_row, short(docs_run)  # lmms-eval's results table

    logged = answers_logged(Path(option(command, "--output_path").replace(DOCS_ROOT, str(tiny_task["root"]))))
    sampling = docs_sampling(command)
    ours = readme_path_answers(tiny_task["model"], tiny_task["questions"], sampling)
    assert len(ours) == len(make_tiny_task.QUESTIONS) and all(answer.strip() for answer in ours.values())
    assert logged == ours
    # The comparison can tell the sampling apart: the processor's defaults give other answers.
    assert sampling and readme_path_answers(tiny_task["model"], tiny_task["questions"], {}) != ours


@needs_lmms_eval
def test_a_protocol_brings_its_sampling_and_thresholds(tiny_task):
    """The docs' command with `protocol=videomme` in place of its sampling options: the official script's sampling
    (0.5 fps) reaches the processor and its STC threshold (0.65) `generate` (`tests/test_lmms_eval_settings.py` checks
    every protocol and argument without lmms-eval)."""
    command = docs_lmms_eval_command()
    arguments = {k: v for k, v in model_args(command).items() if k not in ("fps", "max_frames")}
    arguments["protocol"] = "videomme"
    command = with_option(command, "--model_args", ",".join(f"{k}={v}" for k, v in arguments.items()))
    output = tiny_task["root"] / "results-protocol"
    result = run_lmms_eval(with_option(command, "--output_path", str(output)), tiny_task["root"])
    assert result.returncode == 0, short(result)
    ours = readme_path_answers(tiny_task["model"], tiny_task["questions"], {"fps": 0.5}, {"stc_threshold": 0.65})
    assert answers_logged(output) == ours
    assert readme_path_answers(tiny_task["model"], tiny_task["questions"], {}) != ours  # the sampling shows


@needs_lmms_eval
def test_two_processes_answer_like_one(tiny_task, docs_run):
    assert docs_run.returncode == 0, short(docs_run)
    command = docs_lmms_eval_command()
    output = tiny_task["root"] / "results-2-processes"
    result = run_lmms_eval(with_option(command, "--output_path", str(output)), tiny_task["root"], processes=2)
    assert result.returncode == 0, short(result)
    assert "longvu (process 1/2)" in result.stdout and "longvu (process 2/2)" in result.stdout, short(result)
    first_run = Path(option(command, "--output_path").replace(DOCS_ROOT, str(tiny_task["root"])))
    assert answers_logged(output) == answers_logged(first_run)


@needs_lmms_eval
def test_a_missing_video_fails_the_run(tiny_task):
    """lmms-eval's command line exits with status 0 after an exception; a LongVU failure must not."""
    root = tiny_task["root"] / "missing-video"
    task = make_tiny_task.write_tiny_task(root / "task")
    missing = task / "videos" / make_tiny_task.CLIPS[2][0]
    missing.unlink()
    command = docs_lmms_eval_command()
    command = with_option(command, "--include_path", str(task))
    command = with_option(command, "--output_path", str(root / "results"))
    command = with_option(command, "--model_args", option(command, "--model_args").replace(
        f"{DOCS_ROOT}/model", str(tiny_task["model"])))
    result = run_lmms_eval(command, root)
    assert result.returncode == 1, short(result)
    assert "longvu (lmms-eval): answering question 2 of task longvu_tiny_video_mcq" in result.stderr, short(result)
    assert str(missing) in result.stderr


def test_remote_code_processor_accepts_empty_audio_lists(tmp_path, tiny_task):
    """lmms-eval's generic `huggingface` model calls `processor(..., images=[], audios=[])` on the remote-code copy
    of a converted folder; that copy is generated from the package, so it has the package's behaviour."""
    folder = tiny_task["model"]
    clip = tiny_task["task"] / "videos" / make_tiny_task.CLIPS[0][0]
    script = f"""
import json
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
clip = {str(clip)!r}
messages = [{{"role": "user", "content": [{{"type": "video", "video": clip}}, {{"type": "text", "text": "What"}}]}}]
text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = processor(text=[text], images=[], videos=[clip], audios=[], padding=True, return_tensors="pt")
try:
    processor(text=[text], videos=[clip], audios=["speech.wav"])
    refused = ""
except ValueError as error:
    refused = str(error)
print(json.dumps({{"module": type(processor).__module__, "frames": inputs["video_num_frames"].tolist(),
                   "refused": refused}}))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules."), report  # the folder's copy, not the package
    assert report["frames"] == [8]
    assert "`audios` which is deprecated" in report["refused"]  # only empty lists are taken as "no audio"

