"""Saved video features (`LongVUVideoFeatures.save` / `load`): long videos round-trip field for field, and every
edited, mismatched or malformed file is a ValueError that names the file and the field (never KeyError, TypeError or
ZeroDivisionError, never features that answer wrongly without a word)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from longvu_hf import LongVUVideoFeatures
from longvu_hf.modeling.video_features import _checksum

from tiny_model import TINY_VIDEO_TOKEN_ID as V, make_tiny_model, random_video_inputs

LONG_FRAMES = 40  # past the tiny model's selection threshold (15 frames at its 1024-token context)
SHORT_FRAMES = 6  # under it: every frame kept, with the frames selection would keep recorded
IDS = torch.tensor([[7, V, 9, 11]])


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


@pytest.fixture(scope="module")
def long_and_short(model):
    """Inputs and features of two videos, one that every prompt selects frames from and one short enough that none
    does: the two kinds of `EncodedVideo` a file can hold."""
    # Runs of 8 equal frames: selection drops some (33 of 40 kept), so the kept indices are not simply 0..39.
    long_inputs = random_video_inputs(LONG_FRAMES, seed=1, duplicate_runs=8)
    short_inputs = random_video_inputs(SHORT_FRAMES, seed=2, duplicate_runs=SHORT_FRAMES)  # selection would keep 1
    long_features, short_features = model.encode_videos(**long_inputs), model.encode_videos(**short_inputs)
    assert not long_features[0].all_frames_kept and short_features[0].all_frames_kept
    assert len(long_features[0].candidate_indices) < LONG_FRAMES
    assert len(short_features[0].selected_indices) < len(short_features[0].candidate_indices) == SHORT_FRAMES
    both = LongVUVideoFeatures([long_features[0], short_features[0]], fingerprint=long_features.fingerprint,
                               settings=long_features.settings)
    return long_inputs, short_inputs, both


@pytest.fixture
def saved(long_and_short, tmp_path) -> Path:
    long_and_short[2].save(tmp_path / "clip.longvu")
    return tmp_path / "clip.longvu"


def rewrite(stem: Path, edit_meta=None, edit_tensors=None, checksum: bool = True) -> None:
    """Edit a saved pair as someone with the file format in hand would: change fields or tensors, then (unless
    `checksum=False`) recompute the checksum, so that only the field checks stand between the edit and the model."""
    meta_path, tensors_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")
    meta = json.loads(meta_path.read_text())
    if edit_tensors is not None:
        tensors = load_file(tensors_path)
        edit_tensors(tensors)
        save_file(tensors, tensors_path, metadata={"format": "longvu-video-features"})
    if edit_meta is not None:
        edit_meta(meta)
    if checksum and isinstance(meta, dict):
        meta["sha256"] = _checksum({k: v for k, v in meta.items() if k != "sha256"}, tensors_path.read_bytes())
    meta_path.write_text(json.dumps(meta))


def refused(stem: Path, *fragments: str) -> str:
    """Loading fails with a plain ValueError that names the file and holds every fragment."""
    with pytest.raises(Exception) as caught:
        LongVUVideoFeatures.load(stem)
    message = str(caught.value)
    assert caught.type is ValueError, f"{caught.type.__name__}: {message}"
    assert stem.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def answer(model, **inputs):
    with torch.no_grad():
        return model(input_ids=IDS, **inputs)


# ---------------------------------------------------------------------------------------------------------------------
# What works
# ---------------------------------------------------------------------------------------------------------------------


def test_a_long_video_saves_and_loads_field_for_field(model, long_and_short, saved):
    # Selection keeps the candidates themselves as `selected_indices`: one tensor, which safetensors refused to write
    # twice ("Some tensors share memory") for every video past the threshold.
    long_inputs, short_inputs, features = long_and_short
    storage = [features[0].selected_indices.untyped_storage(), features[0].candidate_indices.untyped_storage()]
    assert storage[0].data_ptr() == storage[1].data_ptr()
    loaded = LongVUVideoFeatures.load(saved)
    assert (loaded.fingerprint, loaded.settings, len(loaded)) == (features.fingerprint, features.settings, 2)
    for mine, theirs in zip(loaded, features):
        assert (mine.num_input_frames, mine.size_hw, mine.all_frames_kept) == (
            theirs.num_input_frames, theirs.size_hw, theirs.all_frames_kept)
        for name in ("candidate_indices", "selected_indices", "sva"):
            assert getattr(mine, name).dtype == getattr(theirs, name).dtype
            assert torch.equal(getattr(mine, name), getattr(theirs, name)), name
    assert loaded[0].num_input_frames == LONG_FRAMES and len(loaded[0].candidate_indices) < LONG_FRAMES
    for entry, inputs in zip(loaded, (long_inputs, short_inputs)):
        one = LongVUVideoFeatures([entry], fingerprint=loaded.fingerprint, settings=loaded.settings)
        from_file, from_pixels = answer(model, video_features=one), answer(model, **inputs)
        assert from_file.compression[0] == from_pixels.compression[0]
        torch.testing.assert_close(from_file.logits, from_pixels.logits, rtol=1e-4, atol=1e-5)


def test_shared_and_strided_tensors_save(long_and_short, tmp_path):
    # The same video twice (one sva buffer for two entries) and an sva that is a view into a larger buffer.
    video = long_and_short[2][0]
    wide = torch.cat([video.sva, video.sva], dim=1)
    view = type(video)(video.num_input_frames, video.size_hw, video.candidate_indices, wide[:, : video.sva.shape[1]],
                       video.selected_indices, video.all_frames_kept)
    features = LongVUVideoFeatures([video, video, view], fingerprint=long_and_short[2].fingerprint,
                                   settings=long_and_short[2].settings)
    features.save(tmp_path / "three")
    loaded = LongVUVideoFeatures.load(tmp_path / "three")
    assert all(torch.equal(entry.sva, video.sva) for entry in loaded)


def test_save_refuses_what_load_would_refuse(long_and_short, tmp_path):
    video = long_and_short[2][0]
    broken = type(video)(video.num_input_frames, video.size_hw, video.candidate_indices, video.sva.clone(),
                         video.selected_indices, video.all_frames_kept)
    broken.sva[0, 0, 0] = math.nan
    features = LongVUVideoFeatures([broken], fingerprint=long_and_short[2].fingerprint,
                                   settings=long_and_short[2].settings)
    with pytest.raises(ValueError, match=r"`videos\[0\].sva` holds NaN"):
        features.save(tmp_path / "nan")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# Changed files: the checksum covers both
# ---------------------------------------------------------------------------------------------------------------------


def test_any_change_to_either_file_fails_the_checksum(saved, tmp_path, long_and_short, model):
    def bump_frames(meta):
        meta["videos"][1]["num_input_frames"] += 1

    original_meta = saved.with_name("clip.longvu.json").read_text()
    rewrite(saved, edit_meta=bump_frames, checksum=False)  # a consistent-looking edit of the JSON alone
    refused(saved, "changed or truncated", "checksum")
    saved.with_name("clip.longvu.json").write_text(original_meta)
    LongVUVideoFeatures.load(saved)  # back as saved

    tensors = saved.with_name("clip.longvu.safetensors")
    original = tensors.read_bytes()
    tensors.write_bytes(original[:-10])
    refused(saved, "changed or truncated")
    tensors.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    refused(saved, "changed or truncated")

    # A tensor file from another save of the same model: both files valid, but not a pair.
    other = LongVUVideoFeatures([long_and_short[2][1], long_and_short[2][0]], fingerprint=long_and_short[2].fingerprint,
                                settings=long_and_short[2].settings)
    other.save(tmp_path / "other")
    tensors.write_bytes((tmp_path / "other.safetensors").read_bytes())
    refused(saved, "do not belong together")


def test_files_of_the_old_format_are_refused_with_what_to_do(saved):
    def old(meta):
        meta["format_version"] = 1
        meta["tensors_sha256"] = meta.pop("sha256")

    rewrite(saved, edit_meta=old, checksum=False)
    refused(saved, "format 1", "encode the video again")


# ---------------------------------------------------------------------------------------------------------------------
# Edited fields, checksum recomputed: each field checked on its own
# ---------------------------------------------------------------------------------------------------------------------


def _set(path: str, value):
    """An edit that sets one JSON field (`videos.1.size_hw` style path) to `value`, or deletes it for `...`."""
    *parents, last = path.split(".")

    def edit(meta):
        node = meta
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        key = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]
        else:
            node[key] = value

    return edit


JSON_EDITS = {
    # field: (edit, fragments the message holds)
    "frames zero": (_set("videos.0.num_input_frames", 0), ["videos[0].num_input_frames", "got 0"]),
    "frames negative": (_set("videos.1.num_input_frames", -3), ["videos[1].num_input_frames"]),
    "frames as text": (_set("videos.1.num_input_frames", "6"), ["videos[1].num_input_frames", "(str)"]),
    "frames as float": (_set("videos.1.num_input_frames", 6.0), ["videos[1].num_input_frames", "(float)"]),
    "frames as bool": (_set("videos.1.num_input_frames", True), ["videos[1].num_input_frames", "(bool)"]),
    "frames huge": (_set("videos.1.num_input_frames", 10**40), ["videos[1].num_input_frames"]),
    "frames below the kept indices": (_set("videos.0.num_input_frames", 5), ["videos[0].candidate_indices",
                                                                             "num_input_frames - 1 = 4"]),
    "frames above the kept ones, all kept": (_set("videos.1.num_input_frames", 9), ["videos[1].candidate_indices",
                                                                                    "all 9 frames"]),
    "height zero": (_set("videos.0.size_hw.0", 0), ["videos[0].size_hw (height)"]),
    "width negative": (_set("videos.1.size_hw.1", -64), ["videos[1].size_hw (width)"]),
    "size as text": (_set("videos.0.size_hw", "36x64"), ["videos[0].size_hw", "[height, width]"]),
    "size of one": (_set("videos.0.size_hw", [36]), ["videos[0].size_hw"]),
    "size float": (_set("videos.0.size_hw", [36.5, 64]), ["videos[0].size_hw (height)"]),
    "all kept as text": (_set("videos.0.all_frames_kept", "false"), ["videos[0].all_frames_kept"]),
    "all kept flipped on": (_set("videos.0.all_frames_kept", True), ["videos[0].candidate_indices", "all_frames_kept"]),
    "all kept flipped off": (_set("videos.1.all_frames_kept", False), ["videos[1].selected_indices",
                                                                     "all_frames_kept"]),
    "video missing a key": (_set("videos.1.size_hw", ...), ["missing field", "videos[1].size_hw"]),
    "video with an extra key": (_set("videos.1.extra", 1), ["unknown field", "videos[1].extra"]),
    "video not an object": (_set("videos.1", [6]), ["videos[1]", "must be an object"]),
    "no videos": (_set("videos", []), ["`videos` must be a non-empty list"]),
    "videos an object": (_set("videos", {"0": 1}), ["`videos` must be a non-empty list"]),
    "one video fewer": (lambda meta: meta["videos"].pop(), ["does not hold the tensors", "unexpected"]),
    "one video more": (lambda meta: meta["videos"].append(dict(meta["videos"][0])), ["does not hold the tensors",
                                                                                     "missing"]),
    "threshold as text": (_set("settings.dino_threshold", "0.83"), ["settings.dino_threshold"]),
    "threshold as bool": (_set("settings.dino_threshold", True), ["settings.dino_threshold"]),
    "context zero": (_set("settings.max_context_length", 0), ["settings.max_context_length"]),
    "context float": (_set("settings.max_context_length", 1024.0), ["settings.max_context_length"]),
    "margin negative": (_set("settings.context_margin", -1), ["settings.context_margin"]),
    "settings missing a key": (_set("settings.context_margin", ...), ["missing field", "settings.context_margin"]),
    "settings with an extra key": (_set("settings.stc_threshold", 0.5), ["unknown field", "settings.stc_threshold"]),
    "settings a list": (_set("settings", [0.83, 1024, 16]), ["`settings` must be an object"]),
    "fingerprint short": (_set("fingerprint", "abc"), ["`fingerprint`"]),
    "fingerprint a number": (_set("fingerprint", 12), ["`fingerprint`"]),
    "format": (_set("format", "something-else"), ["`format`"]),
    "missing top-level key": (_set("fingerprint", ...), ["missing field", "fingerprint"]),
    "extra top-level key": (_set("note", "hi"), ["unknown field", "note"]),
    "checksum a number": (lambda meta: meta.update(sha256=5), ["`sha256` must be a string"]),
}


@pytest.mark.parametrize("case", list(JSON_EDITS))
def test_every_json_field_is_checked(saved, case):
    edit, fragments = JSON_EDITS[case]
    # "checksum a number" replaces the checksum after it is computed: write it as edited.
    rewrite(saved, edit_meta=edit, checksum=case != "checksum a number")
    refused(saved, *fragments)


def _tensor(name: str, make):
    def edit(tensors):
        tensors[name] = make(tensors[name])

    return edit


def _drop(name: str):
    return lambda tensors: tensors.pop(name)


def _nan_at_end(sva):
    sva = sva.clone()
    sva[-1, -1, -1] = math.nan
    return sva


TENSOR_EDITS = {
    "candidate negative": (_tensor("0.candidate_indices", lambda t: torch.cat([t[:1] * 0 - 1, t[1:]])),
                           ["videos[0].candidate_indices", "sorted, unique"]),
    "candidate past the end": (_tensor("0.candidate_indices", lambda t: torch.cat([t[:-1], t[-1:] * 0 + LONG_FRAMES])),
                               ["videos[0].candidate_indices", f"num_input_frames - 1 = {LONG_FRAMES - 1}"]),
    "candidates unsorted": (_tensor("0.candidate_indices", lambda t: t.flip(0)), ["videos[0].candidate_indices"]),
    "candidates repeated": (_tensor("1.candidate_indices", lambda t: torch.cat([t[:1], t[:-1]])),
                            ["videos[1].candidate_indices", "unique"]),
    "candidates as float": (_tensor("0.candidate_indices", lambda t: t.float()),
                            ["videos[0].candidate_indices", "1-D int64", "torch.float32"]),
    "candidates as int32": (_tensor("0.candidate_indices", lambda t: t.int()), ["videos[0].candidate_indices"]),
    "candidates 2-D": (_tensor("0.candidate_indices", lambda t: t[None]), ["videos[0].candidate_indices", "1-D"]),
    "candidates empty": (_tensor("1.candidate_indices", lambda t: t[:0]), ["videos[1].candidate_indices", "empty"]),
    "selected outside the candidates": (_tensor("1.selected_indices", lambda t: t * 0 + SHORT_FRAMES),
                                        ["videos[1].selected_indices"]),
    "selected not the candidates": (_tensor("0.selected_indices", lambda t: t[:-1]),
                                    ["videos[0].selected_indices", "must equal"]),
    "selected empty": (_tensor("1.selected_indices", lambda t: t[:0]), ["videos[1].selected_indices", "empty"]),
    "sva NaN": (_tensor("0.sva", _nan_at_end), ["videos[0].sva", "NaN or infinite"]),
    "sva infinite": (_tensor("1.sva", lambda t: t * math.inf), ["videos[1].sva", "NaN or infinite"]),
    "sva a row short": (_tensor("0.sva", lambda t: t[:-1].clone()), ["videos[0].sva", "one row per candidate"]),
    "sva no queries": (_tensor("0.sva", lambda t: t[:, :0].clone()), ["videos[0].sva", "non-empty"]),
    "sva 2-D": (_tensor("0.sva", lambda t: t[:, 0].clone()), ["videos[0].sva", "3-D"]),
    "sva integer": (_tensor("0.sva", lambda t: t.to(torch.int32)), ["videos[0].sva", "torch.int32"]),
    "tensor missing": (_drop("1.sva"), ["does not hold the tensors", "missing: ['1.sva']"]),
    "tensor extra": (lambda t: t.update({"2.sva": t["0.sva"].clone()}), ["does not hold the tensors", "2.sva"]),
}


@pytest.mark.parametrize("case", list(TENSOR_EDITS))
def test_every_tensor_is_checked(saved, case):
    edit, fragments = TENSOR_EDITS[case]
    rewrite(saved, edit_tensors=edit)
    refused(saved, *fragments)


# ---------------------------------------------------------------------------------------------------------------------
# Malformed files
# ---------------------------------------------------------------------------------------------------------------------


MALFORMED_JSON = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "not UTF-8": lambda text: "\udcff",  # written with surrogateescape: a lone 0xFF byte
    "NaN literal": lambda text: text.replace('"dino_threshold": 0.83', '"dino_threshold": NaN'),
    "a list": lambda text: "[1, 2, 3]",
    "a number": lambda text: "12",
    "deeply nested": lambda text: "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("case", list(MALFORMED_JSON))
def test_malformed_json_is_a_value_error(saved, case):
    meta = saved.with_name("clip.longvu.json")
    text = json.dumps(json.loads(meta.read_text()))  # one line, `"key": value` spacing
    assert '"dino_threshold": 0.83' in text
    meta.write_bytes(MALFORMED_JSON[case](text).encode("utf-8", "surrogateescape"))
    message = refused(saved)
    assert "format" in message or "JSON" in message, message


def test_tensor_file_that_is_not_safetensors_is_a_value_error(saved):
    def garbage(meta):
        saved.with_name("clip.longvu.safetensors").write_bytes(b"\xff" * 64)

    rewrite(saved, edit_meta=garbage)  # checksum recomputed over the garbage
    refused(saved, "not a valid safetensors file")


def test_missing_files_are_file_not_found(saved):
    saved.with_name("clip.longvu.json").unlink()
    with pytest.raises(FileNotFoundError, match="clip.longvu.json does not exist"):
        LongVUVideoFeatures.load(saved)


def test_geometry_only_the_model_knows_is_checked_at_use(model, saved):
    # A file valid on its own whose aggregator output has the wrong width for this model: `load` cannot know,
    # `check_geometry` (what the model calls with its own sizes) refuses it instead of a shape error deep in the model.
    config = model.config
    geometry = (config.num_queries, config.aggregator_hidden_size, torch.float32)
    LongVUVideoFeatures.load(saved).check_geometry(*geometry)  # the real file passes
    rewrite(saved, edit_tensors=_tensor("1.sva", lambda t: t[:, :, :5].clone()))
    narrow = LongVUVideoFeatures.load(saved)
    with pytest.raises(ValueError, match=r"videos\[1\].sva holds torch.float32 values of \(144, 5\) per frame"):
        narrow.check_geometry(*geometry)
    ids = torch.tensor([[5, config.video_token_id, 6]])
    with pytest.raises(ValueError, match=r"videos\[0\].sva holds .* \(144, 5\)"):  # the model checks before use
        model(input_ids=ids, video_features=LongVUVideoFeatures([narrow[1]], fingerprint=narrow.fingerprint,
                                                                 settings=narrow.settings))
    rewrite(saved, edit_tensors=_tensor("1.sva", lambda t: t.half()))
    with pytest.raises(ValueError, match=r"videos\[1\].sva holds torch.float16"):
        LongVUVideoFeatures.load(saved).check_geometry(*geometry)
