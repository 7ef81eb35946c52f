"""Inputs in forms that used to be misread or misreported: `longvu chat` questions piped with blank lines between
them, float pixels scaled to 0..1 (neither the documented uint8 nor normalised floats), NaN pixels, and numpy arrays
handed to the model."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from longvu_hf import LongVUProcessor, LongVUVideoProcessor, cli
from longvu_hf.cli import commands

from conftest import make_tiny_tokenizer, make_video
from tiny_model import TINY_VIDEO_TOKEN_ID as V, make_tiny_model, random_video_inputs

IDS = torch.tensor([[5, V, 7]])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------------------------------
# longvu chat
# ---------------------------------------------------------------------------------------------------------------------


def test_piped_chat_answers_every_question_past_blank_lines(tmp_path, monkeypatch, capsys):
    tokenizer = make_tiny_tokenizer()
    folder = tmp_path / "tiny-longvu"
    make_tiny_model(tokenizer).save_pretrained(folder)
    LongVUProcessor(tokenizer, LongVUVideoProcessor()).save_pretrained(folder)
    clip = cli.write_demo_clip(tmp_path / "clip.mp4", seconds=2, fps=4, width=64, height=36)
    asked = []
    original = commands.answer_question
    monkeypatch.setattr(commands, "answer_question",
                        lambda session, q, args, **kw: asked.append(q) or original(session, q, args, **kw))
    monkeypatch.setattr("sys.stdin", io.StringIO("What moves ?\n\n\nWhat colour ?\n   \n\tHow many ?\n"))
    status = cli.main(["chat", str(clip), "--model", str(folder), "--max-new-tokens", "1", "--quiet"])
    assert status == 0, capsys.readouterr().err
    assert asked == ["What moves ?", "What colour ?", "How many ?"]


def test_chat_questions_end_at_eof_when_piped_and_at_an_empty_line_at_the_prompt(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n first \n\n\nsecond"))  # no newline at the end
    assert list(commands.stdin_questions()) == ["first", "second"]
    monkeypatch.setattr("sys.stdin", _Terminal("first\n\nsecond\n"))
    assert list(commands.stdin_questions()) == ["first"]
    assert capsys.readouterr().err == "? ? "  # the prompt, before each line read


# ---------------------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


@pytest.fixture(scope="module")
def clip_pixels(tmp_path_factory):
    """A real clip through the processor three ways: uint8 (the default), normalised floats, and floats only
    rescaled to 0..1 (`do_normalize=False`: the mistake the warning is for)."""
    clip = make_video(tmp_path_factory.mktemp("forms") / "clip.mp4", fps=2, num_frames=4)
    processor = LongVUVideoProcessor()
    return {
        "uint8": processor(videos=str(clip), return_tensors="pt"),
        "normalised": processor(videos=str(clip), do_rescale=True, do_normalize=True, return_tensors="pt"),
        "zero-to-one": processor(videos=str(clip), do_rescale=True, do_normalize=False, return_tensors="pt"),
    }


def _run(model, inputs) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(input_ids=IDS, **inputs)
    return [w for w in caught if "within 0..1" in str(w.message)]


def test_pixels_scaled_to_zero_one_are_warned_about_and_normalised_ones_are_not(model, clip_pixels):
    assert clip_pixels["uint8"]["pixel_values_videos"].dtype == torch.uint8
    assert clip_pixels["normalised"]["pixel_values_videos"].min() < 0  # the real thing holds negative values
    assert not _run(model, clip_pixels["uint8"]) and not _run(model, clip_pixels["normalised"])
    caught = _run(model, clip_pixels["zero-to-one"])
    assert {str(w.message).split("`")[1] for w in caught} == {"pixel_values_videos", "pixel_values_videos_dino"}
    assert all("uint8 (0..255" in str(w.message) for w in caught)
    # The rule cannot refuse real input: a bright frame's normalised SigLIP pixels lie within 0..1 too, so it warns
    # (and the call goes on) rather than refusing.
    bright = random_video_inputs(2)
    bright["pixel_values_videos"] = torch.full((2, 3, 384, 384), 0.6)
    assert len(_run(model, bright)) == 1


@pytest.mark.parametrize(
    "convert, message",
    [
        (lambda t: t.numpy(), "is a numpy.ndarray of dtype uint8, not a torch tensor"),
        (lambda t: t.numpy().astype(np.float64) / 255, "is a numpy.ndarray of dtype float64, not a torch tensor"),
        (lambda t: t.float().index_fill(0, torch.tensor([1]), float("nan")), "holds NaN or infinite values"),
        (lambda t: t.float().index_fill(0, torch.tensor([1]), float("inf")), "holds NaN or infinite values"),
    ],
    ids=["numpy-uint8", "numpy-float64", "nan", "inf"],
)
def test_pixels_of_the_wrong_kind_are_refused_with_what_they_are(model, convert, message):
    inputs = random_video_inputs(2)
    inputs["pixel_values_videos"] = convert(inputs["pixel_values_videos"])
    with pytest.raises(ValueError, match=f"`pixel_values_videos` {message}"):
        model(input_ids=IDS, **inputs)
