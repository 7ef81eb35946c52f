"""Every folder `save_pretrained` writes loads from the Hub without longvu-hf: remote code and `auto_map`s."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from longvu_hf import LongVUProcessor, LongVUVideoProcessor
from longvu_hf.remote_code import AUTO_MAP_FILES, MODEL_AUTO_MAP, PROCESSOR_AUTO_MAP

from conftest import make_tiny_tokenizer
from tiny_model import make_tiny_model, random_video_inputs

SRC_DIR = Path(__file__).resolve().parents[1] / "src"

# Loads a folder with trust_remote_code in a process where `longvu_hf` cannot be imported, runs it on the saved
# inputs, saves it again (from the remote code) and loads that copy too.
WITHOUT_PACKAGE = textwrap.dedent("""
    import json, sys
    sys.modules["longvu_hf"] = None  # the package cannot be imported
    sys.path = [p for p in sys.path if not p.startswith(sys.argv[3])]
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, inputs_file, resaved = sys.argv[1], sys.argv[2], sys.argv[4]
    inputs = load_file(inputs_file)
    report = {}
    for name, path in (("saved", folder), ("resaved", resaved)):
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        with torch.no_grad():
            logits = model(**inputs).logits
        report[name] = {
            "classes": [type(model).__module__, type(processor).__name__, type(processor.video_processor).__name__],
            "logits": logits.flatten()[:64].tolist(),
        }
        if name == "saved":
            model.save_pretrained(resaved)
            processor.save_pretrained(resaved)
    report["resaved_keys"] = sorted(load_file(resaved + "/model.safetensors"))  # the remote code's key names
    print(json.dumps(report))
""")


def _run_without_package(folder: Path, inputs: dict, tmp_path: Path) -> dict:
    inputs_file = tmp_path / "inputs.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, inputs_file)
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PACKAGE, str(folder), str(inputs_file), str(SRC_DIR), str(tmp_path / "resaved")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_saved_model_and_processor_load_without_the_package(tmp_path):
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer)
    processor = LongVUProcessor(tokenizer, LongVUVideoProcessor())
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {**MODEL_AUTO_MAP, **PROCESSOR_AUTO_MAP}
    assert json.loads((folder / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": PROCESSOR_AUTO_MAP["AutoProcessor"]
    }
    for source in folder.glob("*.py"):
        assert not re.search(r"^\s*(from \.\.|from longvu_hf|import longvu_hf)", source.read_text(), re.M), source

    inputs = {"input_ids": torch.tensor([[5, model.config.video_token_id, 7]]), **random_video_inputs(3)}
    with torch.no_grad():
        expected = model(**inputs).logits.flatten()[:64]
    report = _run_without_package(folder, inputs, tmp_path)
    for name in ("saved", "resaved"):
        assert report[name]["classes"][0].startswith("transformers_modules."), report[name]
        assert report[name]["classes"][1:] == ["LongVUProcessor", "LongVUVideoProcessor"]
        torch.testing.assert_close(torch.tensor(report[name]["logits"]), expected, rtol=1e-4, atol=1e-5)
    # Remote code registers the same key renaming as the package: it loads and saves the first releases' key names.
    assert report["resaved_keys"] == sorted(load_file(folder / "model.safetensors"))
    assert any(key.startswith("model.vision_tower.") for key in report["resaved_keys"])


def test_processor_alone_and_model_alone(tmp_path):
    tokenizer = make_tiny_tokenizer()
    LongVUProcessor(tokenizer, LongVUVideoProcessor()).save_pretrained(tmp_path / "processor")
    assert (tmp_path / "processor" / "processing_longvu.py").is_file()
    assert not (tmp_path / "processor" / "config.json").exists()

    make_tiny_model(tokenizer).save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"] == MODEL_AUTO_MAP
    LongVUVideoProcessor().save_pretrained(tmp_path / "video_processor")
    saved = json.loads((tmp_path / "video_processor" / "video_preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoVideoProcessor": PROCESSOR_AUTO_MAP["AutoVideoProcessor"]}


def test_auto_map_names_the_package_classes():
    from longvu_hf import (
        LongVUConfig, LongVUForConditionalGeneration, LongVUModel, LongVUProcessor, LongVUVideoProcessor,
    )

    classes = {
        "AutoConfig": LongVUConfig,
        "AutoModel": LongVUModel,
        "AutoModelForImageTextToText": LongVUForConditionalGeneration,
        "AutoModelForMultimodalLM": LongVUForConditionalGeneration,
        "AutoProcessor": LongVUProcessor,
        "AutoVideoProcessor": LongVUVideoProcessor,
    }
    files = {auto: cls.__module__.removeprefix("longvu_hf.").replace(".", "/") + ".py" for auto, cls in classes.items()}
    derived = {auto: f"{Path(files[auto]).stem}.{cls.__name__}" for auto, cls in classes.items()}
    assert derived == {**MODEL_AUTO_MAP, **PROCESSOR_AUTO_MAP}
    assert sorted(set(files.values())) == sorted(AUTO_MAP_FILES)
