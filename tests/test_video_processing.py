"""LongVUVideoProcessor: sampling parity with the reference, pixel parity with the golden fixtures, decoding of real
files (several containers, frame rates, orientations), arrays, folders, URLs, images, bad inputs, save/load."""

import http.server
import json
import os
import re
import threading
from functools import partial

import numpy as np
import pytest
import torch
from conftest import GOLDEN_DIR, frame_level, make_video
from PIL import Image
from safetensors.torch import load_file

from longvu_hf.processing import LongVUVideoProcessor
from longvu_hf.processing.frame_transforms import expand_to_square, pad_and_resize_pil, pad_and_resize_torch
from longvu_hf.processing.video_decoding import PyAVFrameSource, available_video_backends, open_frame_source
from longvu_hf.processing.video_processing_longvu import reference_frame_stride, sample_frame_indices

SAMPLING_DIR = GOLDEN_DIR / "video_sampling"
SAMPLING = json.loads((SAMPLING_DIR / "sampling.json").read_text())
GOLDEN_CASES = sorted(path.parent.name for path in GOLDEN_DIR.glob("*/inputs.safetensors"))
BACKENDS = available_video_backends()
SIGLIP_FILL, DINO_FILL = (127, 127, 127), (123, 116, 103)

# How each rule of sampling.json is asked for through the processor's kwargs.
RULE_KWARGS = {
    "readme_app_1fps": {},
    "train_video_fps_1": {"fps": 1},
    "eval_videomme_0.5fps": {"fps": 0.5},
    "eval_mlvu_egoschema_0.5fps": {"fps": 0.5, "max_frames": 1000, "max_frames_mode": "stride"},
    "eval_mvbench_2fps": {"fps": 2},
    "eval_mvbench_2fps_bound": {"fps": 2, "start_time": 2.0, "end_time": 7.5},
}


@pytest.fixture(scope="module")
def processor():
    return LongVUVideoProcessor()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Real short mp4 files: two frame rates, landscape and portrait."""
    folder = tmp_path_factory.mktemp("videos")
    return {
        "landscape_25": make_video(folder / "landscape_25.mp4", fps=25, num_frames=60, width=64, height=36),
        "portrait_2997": make_video(folder / "portrait_2997.mp4", fps=29.97, num_frames=75, width=36, height=64),
    }


def reference_canvas(frame: np.ndarray, fill, size) -> np.ndarray:
    """The reference recipe, literally: fromarray -> expand2square -> resize (default bicubic)."""
    return np.array(expand_to_square(Image.fromarray(frame), fill).resize((size, size)))


def decode_all_frames(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# ------------------------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------------------------


def test_reference_stride_arithmetic():
    assert reference_frame_stride(25.0, 1) == 25
    assert reference_frame_stride(29.97002997, 1) == 30
    assert reference_frame_stride(25.0, 2) == 12  # round(12.5) is 12: Python rounds halves to even
    assert reference_frame_stride(29.97002997, 2) == 15
    assert reference_frame_stride(29.97002997, 0.5) == 60  # round(round(29.97) / 0.5)
    assert reference_frame_stride(12.5, 0.5) == 24  # the eval scripts round the rate first: round(12) / 0.5
    assert reference_frame_stride(0.4, 1) == 1
    with pytest.raises(ValueError, match="fps"):
        reference_frame_stride(25.0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", sorted(SAMPLING["videos"]))
def test_sampling_matches_reference_indices(processor, backend, clip):
    expected = SAMPLING["videos"][clip]
    source = open_frame_source(str(SAMPLING_DIR / clip), backend)
    assert source.metadata.total_num_frames == expected["decord_len"]
    assert source.metadata.fps == pytest.approx(expected["decord_avg_fps"], rel=1e-9)
    assert list(source.frame_size) == expected["frame_hw"]
    for rule, kwargs in RULE_KWARGS.items():
        indices = processor.sample_frames(source.metadata, **kwargs)
        assert indices.tolist() == expected["rules"][rule]["indices"], rule


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_frames_match_reference_decoder(processor, backend):
    """The frames decoded at the sampled indices are decord's frames (stored by the golden fixtures)."""
    clip = "clip_29.97fps.mp4"
    stored = load_file(str(SAMPLING_DIR / "clip_29.97fps_frames.safetensors"))
    position = {index: k for k, index in enumerate(stored["indices"].tolist())}
    out = processor(str(SAMPLING_DIR / clip), video_backend=backend, fps=2, return_metadata=True)
    indices = out["video_metadata"][0].frames_indices
    assert indices == SAMPLING["videos"][clip]["rules"]["eval_mvbench_2fps"]["indices"]
    expected = torch.stack([torch.from_numpy(reference_canvas(stored["frames"][position[i]].numpy(), SIGLIP_FILL, 384))
                            for i in indices]).permute(0, 3, 1, 2)
    difference = (out["pixel_values_videos"].int() - expected.int()).abs()
    # decord and FFmpeg-based decoders may differ in YUV->RGB by a few levels.
    assert difference.float().mean() < 0.5 and difference.max() <= 4


def test_sampling_options():
    # num_frames: evenly spread over the clip, like transformers' default
    assert sample_frame_indices(100, 25.0, num_frames=4).tolist() == [0, 25, 50, 75]
    # arrays without metadata: every frame, or the cap
    assert sample_frame_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    assert sample_frame_indices(10, None, max_frames=3).tolist() == [0, 4, 9]
    # max_frames: uniform (keeps exactly max_frames, on the 1-fps grid) or the eval scripts' stride
    assert sample_frame_indices(250, 25.0, max_frames=4).tolist() == [0, 75, 150, 225]
    assert sample_frame_indices(250, 25.0, max_frames=4, max_frames_mode="stride").tolist() == [0, 50, 100, 150, 200]
    # clip bounds (MVBench arithmetic: the end is exclusive and at most the last frame)
    assert sample_frame_indices(100, 10.0, start_time=2, end_time=5).tolist() == [20, 30, 40]
    assert sample_frame_indices(100, 10.0, start_time=8.1).tolist() == [81, 91]
    with pytest.raises(ValueError, match="mutually exclusive"):
        sample_frame_indices(100, 25.0, fps=1, num_frames=4)
    with pytest.raises(ValueError, match="num_frames=20"):
        sample_frame_indices(10, 25.0, num_frames=20)
    with pytest.raises(ValueError, match="holds no frame"):
        sample_frame_indices(100, 10.0, start_time=5, end_time=5)
    with pytest.raises(ValueError, match="frame rate"):
        sample_frame_indices(100, None, start_time=1)
    with pytest.raises(ValueError, match="max_frames_mode"):
        sample_frame_indices(100, 10.0, max_frames=2, max_frames_mode="nearest")


def test_user_num_frames_and_fps_through_processor(processor, videos):
    out = processor(str(videos["landscape_25"]), num_frames=4, return_metadata=True)
    assert out["video_metadata"][0].frames_indices == [0, 15, 30, 45]
    out = processor(str(videos["landscape_25"]), fps=2, max_frames=3, return_metadata=True)
    assert out["video_metadata"][0].frames_indices == [0, 24, 48]


def test_do_sample_frames_false_keeps_every_frame(processor, videos):
    video = np.random.default_rng(0).integers(0, 256, size=(8, 12, 16, 3), dtype=np.uint8)
    for kwargs in ({}, {"num_frames": 3}, {"fps": 2}, {"max_frames": 2}):
        out = processor([video, video[:5]], do_sample_frames=False, **kwargs)
        assert out["video_num_frames"].tolist() == [8, 5], kwargs
    path = str(videos["landscape_25"])  # 60 frames at 25 fps: 3 by the 1-fps rule
    assert processor(path, do_sample_frames=False)["video_num_frames"].tolist() == [60]
    assert processor([video, video[:5]], num_frames=3)["video_num_frames"].tolist() == [3, 3]


def test_fps_needs_a_known_frame_rate(processor, tmp_path):
    """`fps` sampling of frames without a frame rate is refused (it used to return every frame), naming `fps` and the
    video; the frame rate can come from `video_metadata` (its `fps`, or `duration`)."""
    from transformers.video_utils import VideoMetadata

    from conftest import frame_pattern

    video = np.random.default_rng(0).integers(0, 256, size=(8, 12, 16, 3), dtype=np.uint8)
    unknown = r"Video #{} \(in-memory frames\) has no known frame rate, so it cannot be sampled at `fps=2`"
    with pytest.raises(ValueError, match=unknown.format(0) + ".*Pass `num_frames`"):
        processor(video, fps=2)
    with pytest.raises(ValueError, match=unknown.format(1)):  # the second video of a batch
        processor([video, video], fps=2, video_metadata=[{"fps": 4}, {}])
    with pytest.raises(ValueError, match="`fps=2`"):
        LongVUVideoProcessor(fps=2)([Image.fromarray(frame) for frame in video])
    with pytest.raises(ValueError, match="`fps=3`"):
        processor.sample_frames(VideoMetadata(total_num_frames=8), fps=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(6):
        Image.fromarray(frame_pattern(index, 16, 12)).save(folder / f"{index}.png")
    with pytest.raises(ValueError, match=re.escape(f"'{folder}' has no known frame rate") + ".*`fps=1`"):
        processor(str(folder), fps=1)
    frame_paths = [str(folder / f"{index}.png") for index in range(6)]
    with pytest.raises(ValueError, match=re.escape(f"the first '{frame_paths[0]}') has no known frame rate")):
        processor([[frame_paths]], fps=1)  # a video given as a list of frame paths

    # Otherwise-known frame rates: the metadata's fps, or frames / duration.
    def sampled(video, **kwargs):
        return processor(video, return_metadata=True, **kwargs)["video_metadata"][0]

    assert sampled(video, fps=2, video_metadata={"fps": 4}).frames_indices == [0, 2, 4, 6]
    by_duration = sampled(video, fps=2, video_metadata={"duration": 2.0})
    assert by_duration.frames_indices == [0, 2, 4, 6] and by_duration.fps == 4.0 and by_duration.timestamps[1] == 0.5
    assert processor.sample_frames(VideoMetadata(total_num_frames=8, duration=2.0), fps=2).tolist() == [0, 2, 4, 6]
    assert sampled(str(folder), fps=1, video_metadata={"fps": 2}).frames_indices == [0, 2, 4]
    # Without `fps`, such frames are all kept (or `num_frames` of them), as before.
    assert processor(video)["video_num_frames"].tolist() == [8]
    assert sampled(video, num_frames=3).frames_indices == [0, 2, 5]


# ------------------------------------------------------------------------------------------------------------------
# Pixels
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_pixels_match_golden_fixtures(processor, case):
    inputs = load_file(str(GOLDEN_DIR / case / "inputs.safetensors"))
    frames = inputs["frames_uint8"]
    exact = processor(frames)
    assert exact["pixel_values_videos"].dtype == torch.uint8
    assert torch.equal(exact["pixel_values_videos"], inputs["siglip_pixel_values_u8"])
    assert torch.equal(exact["pixel_values_videos_dino"], inputs["dino_pixel_values_u8"])
    assert exact["video_num_frames"].tolist() == [len(frames)]
    assert exact["video_sizes"].tolist() == [list(frames.shape[1:3])]

    fast = processor(frames, resize_backend="torch")
    pairs = [("pixel_values_videos", "siglip_pixel_values_u8"), ("pixel_values_videos_dino", "dino_pixel_values_u8")]
    for key, golden in pairs:
        difference = (fast[key].int() - inputs[golden].int()).abs()
        assert difference.float().mean() < 0.01, key  # levels; the goal is < 1 level (1/255) on average
        assert difference.max() <= 2, key


@pytest.mark.parametrize("case", GOLDEN_CASES[:1])
def test_normalised_output_matches_reference_floats(processor, case):
    """With `do_rescale`/`do_normalize` the float pixels equal the reference's (the golden LUTs decode them)."""
    inputs = load_file(str(GOLDEN_DIR / case / "inputs.safetensors"))
    out = processor(inputs["frames_uint8"], do_rescale=True, do_normalize=True)
    channel = torch.arange(3).view(1, 3, 1, 1)
    for key, prefix in [("pixel_values_videos", "siglip"), ("pixel_values_videos_dino", "dino")]:
        reference = inputs[f"{prefix}_pixel_values_lut"][channel, inputs[f"{prefix}_pixel_values_u8"].long()]
        torch.testing.assert_close(out[key], reference, atol=1e-5, rtol=0)


def test_float_output_is_what_the_model_computes_from_uint8():
    """The float pixels of `do_rescale=True, do_normalize=True` give the model exactly the features of the uint8
    pixels it normalises itself (same arithmetic, bit for bit), for videos and images."""
    from tiny_model import make_tiny_model

    model = make_tiny_model()
    processor = LongVUVideoProcessor()
    video = np.random.default_rng(0).integers(0, 256, size=(2, 30, 40, 3), dtype=np.uint8)
    as_uint8 = processor(video)
    as_float = processor(video, do_rescale=True, do_normalize=True)
    assert as_uint8["pixel_values_videos"].dtype == torch.uint8
    assert as_float["pixel_values_videos"].dtype == torch.float32
    with torch.no_grad():
        siglip_u8 = model.model.video_encoder.siglip_features(as_uint8["pixel_values_videos"])
        siglip_float = model.model.video_encoder.siglip_features(as_float["pixel_values_videos"])
        dino_u8 = model.model.video_encoder.dino_features(as_uint8["pixel_values_videos_dino"])
        dino_float = model.model.video_encoder.dino_features(as_float["pixel_values_videos_dino"])
    assert torch.equal(siglip_u8, siglip_float)
    assert torch.equal(dino_u8, dino_float)
    images_u8 = processor.preprocess_images(Image.fromarray(video[0]))
    images_float = processor.preprocess_images(Image.fromarray(video[0]), do_rescale=True, do_normalize=True)
    with torch.no_grad():
        siglip_u8 = model.model.video_encoder.siglip_features(images_u8["pixel_values"])
        siglip_float = model.model.video_encoder.siglip_features(images_float["pixel_values"])
    assert torch.equal(siglip_u8, siglip_float)


def test_rgba_and_grayscale_frames_become_rgb(processor):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(2, 12, 16, 3), dtype=np.uint8)
    expected = processor(rgb)["pixel_values_videos"]
    rgba = [Image.fromarray(frame).convert("RGBA") for frame in rgb]
    assert torch.equal(processor(rgba)["pixel_values_videos"], expected)
    assert torch.equal(processor(np.stack([np.asarray(frame) for frame in rgba]))["pixel_values_videos"], expected)
    gray = rng.integers(0, 256, size=(2, 12, 16), dtype=np.uint8)
    out = processor([Image.fromarray(frame) for frame in gray])["pixel_values_videos"]
    assert out.shape == (2, 3, 384, 384)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


@pytest.mark.parametrize("height,width", [(36, 64), (64, 36), (50, 50), (720, 1280), (1280, 720), (101, 37)])
def test_pil_path_is_bit_exact_with_reference_recipe(height, width):
    rng = np.random.default_rng(height * width)
    frame = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    for fill, size in [(SIGLIP_FILL, 384), (DINO_FILL, 378)]:
        expected = reference_canvas(frame, fill, size)
        np.testing.assert_array_equal(pad_and_resize_pil(frame, fill, size), expected)
        fast = pad_and_resize_torch(torch.from_numpy(frame).permute(2, 0, 1)[None], fill, size)[0].permute(1, 2, 0)
        difference = np.abs(fast.numpy().astype(int) - expected.astype(int))
        assert difference.mean() < 0.01 and difference.max() <= 2


# ------------------------------------------------------------------------------------------------------------------
# Decoding real files
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["landscape_25", "portrait_2997"])
def test_real_mp4_files(processor, videos, backend, name):
    path = videos[name]
    out = processor(str(path), video_backend=backend, return_metadata=True)
    metadata = out["video_metadata"][0]
    frames = decode_all_frames(path)
    height, width = frames[0].shape[:2]
    step = round(metadata.fps)
    assert metadata.total_num_frames == len(frames)
    assert metadata.frames_indices == list(range(0, len(frames), step))
    assert metadata.timestamps == pytest.approx([index / metadata.fps for index in metadata.frames_indices])
    assert out["video_sizes"].tolist() == [[height, width]]
    assert out["video_num_frames"].tolist() == [len(metadata.frames_indices)]
    assert out["pixel_values_videos"].shape == (len(metadata.frames_indices), 3, 384, 384)
    assert out["pixel_values_videos_dino"].shape == (len(metadata.frames_indices), 3, 378, 378)
    for slot, index in enumerate(metadata.frames_indices):
        expected = reference_canvas(frames[index], DINO_FILL, 378)
        assert np.array_equal(out["pixel_values_videos_dino"][slot].permute(1, 2, 0).numpy(), expected)
        assert abs(frame_level(frames[index]) - ((index * 37) % 200 + 28)) <= 3  # the right frame


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".mov", ".avi", ".gif"])
def test_other_containers(processor, tmp_path, suffix):
    path = make_video(tmp_path / f"clip{suffix}", fps=10, num_frames=25, width=64, height=36)
    out = processor(str(path), return_metadata=True)
    assert out["video_metadata"][0].total_num_frames == 25
    assert out["video_metadata"][0].frames_indices == [0, 10, 20]
    assert out["video_sizes"].tolist() == [[36, 64]]
    levels = [frame_level(out["pixel_values_videos"][k].permute(1, 2, 0).numpy()[100:284]) for k in range(3)]
    # Resizing blends with the moving bar a little; the level still identifies each frame (levels 37 apart).
    expected = [(index * 37) % 200 + 28 for index in (0, 10, 20)]
    assert np.all(np.abs(np.array(levels) - np.array(expected)) < 18)


@pytest.mark.parametrize("gop", [1, 4, 12])
def test_pyav_skipping_decoder_equals_sequential_decoding(tmp_path, gop):
    """Skipping non-reference frames and seeking over GOPs gives exactly the frames a full decode gives."""
    path = make_video(tmp_path / "gop.mp4", fps=10, num_frames=60, width=32, height=18, gop=gop)
    frames = decode_all_frames(path)
    source = PyAVFrameSource(str(path), "gop.mp4")
    assert source._pts_to_rank is not None  # the fast path is the one under test
    rng = np.random.default_rng(gop)
    for indices in [np.arange(0, 60, 10), np.arange(33, 60, 7), np.sort(rng.choice(60, 9, replace=False)), [59]]:
        got = {slot: frame for batch in source.iter_frames(np.asarray(indices), 4) for slot, frame in batch}
        assert sorted(got) == list(range(len(indices)))
        for slot, index in enumerate(indices):
            np.testing.assert_array_equal(got[slot], frames[index])


def test_batch_of_videos_of_different_lengths(processor, videos):
    out = processor([str(videos["landscape_25"]), str(videos["portrait_2997"])])
    assert out["video_num_frames"].tolist() == [3, 3]
    assert out["video_sizes"].tolist() == [[36, 64], [64, 36]]
    assert out["pixel_values_videos"].shape[0] == 6
    single = processor(str(videos["portrait_2997"]))
    assert torch.equal(out["pixel_values_videos"][3:], single["pixel_values_videos"])
    longer = processor([str(videos["landscape_25"]), str(videos["portrait_2997"])], fps=2)
    assert longer["video_num_frames"].tolist() == [5, 5]


def test_frame_progress_reports_every_frame_and_is_removed_afterwards(videos, tmp_path):
    processor = LongVUVideoProcessor(decode_batch_size=2)
    reported = []
    paths = [str(videos["landscape_25"]), str(videos["portrait_2997"])]
    with processor.frame_progress(reported.append):
        out = processor(paths, fps=4)
    assert sum(reported) == int(out["video_num_frames"].sum()) == 21  # 10 + 11 frames
    assert max(reported) <= 2 and len(reported) >= 10  # batch by batch, not once at the end
    processor(paths[0])
    assert sum(reported) == 21  # no callback outside the block
    processor.save_pretrained(tmp_path)  # nothing of the callback is saved
    saved = [path.read_text() for path in tmp_path.glob("*.json")]
    assert saved and not any("progress" in text for text in saved)


def test_nothing_is_written_next_to_the_video(processor, tmp_path):
    path = make_video(tmp_path / "clip.mp4", fps=8, num_frames=16)
    before = sorted(os.listdir(tmp_path))
    processor(str(path))
    processor(str(path), video_backend=BACKENDS[-1])
    assert sorted(os.listdir(tmp_path)) == before


def test_url(processor, tmp_path, monkeypatch):
    from longvu_hf import media_inputs

    path = make_video(tmp_path / "served.mp4", fps=8, num_frames=16)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # Loopback is never fetched; this test server alone is admitted (tests/test_media_inputs.py covers the refusals).
    monkeypatch.setattr(media_inputs, "_ADMITTED_FOR_TESTS", frozenset({("127.0.0.1", server.server_address[1])}))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/served.mp4"
        out = processor(url, return_metadata=True)
        local = processor(str(path))
        assert torch.equal(out["pixel_values_videos"], local["pixel_values_videos"])
        with pytest.raises(ValueError, match="missing.mp4"):
            processor(url.replace("served", "missing"))
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------------------------
# Arrays, tensors, frame folders, images
# ------------------------------------------------------------------------------------------------------------------


def test_arrays_and_tensors(processor):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(5, 36, 64, 3), dtype=np.uint8)
    expected = processor(video)
    assert expected["video_num_frames"].tolist() == [5]  # no metadata: every frame
    channels_first = torch.from_numpy(video).permute(0, 3, 1, 2)
    pil_frames = [Image.fromarray(frame) for frame in video]
    for same in (torch.from_numpy(video), channels_first, pil_frames, video.astype(np.float32) / 255.0):
        out = processor(same)
        assert torch.equal(out["pixel_values_videos"], expected["pixel_values_videos"])
        assert torch.equal(out["pixel_values_videos_dino"], expected["pixel_values_videos_dino"])
    capped = processor(video, max_frames=2)
    assert torch.equal(capped["pixel_values_videos"], expected["pixel_values_videos"][[0, 4]])
    # with metadata, the 1-fps rule applies to arrays too
    with_fps = processor(np.repeat(video, 4, axis=0), video_metadata={"fps": 5}, return_metadata=True)
    assert with_fps["video_metadata"][0].frames_indices == [0, 5, 10, 15]
    # a batch of arrays of different lengths
    batch = processor([video, video[:2]])
    assert batch["video_num_frames"].tolist() == [5, 2]


def test_frame_folder(processor, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    from conftest import frame_pattern

    for index in range(12):  # frame2 must sort before frame10
        Image.fromarray(frame_pattern(index, 64, 36)).save(folder / f"frame{index}.png")
    (folder / "notes.txt").write_text("not a frame")
    out = processor(str(folder), return_metadata=True)
    assert out["video_num_frames"].tolist() == [12]
    assert out["video_sizes"].tolist() == [[36, 64]]
    expected = reference_canvas(frame_pattern(10, 64, 36), SIGLIP_FILL, 384)
    assert np.array_equal(out["pixel_values_videos"][10].permute(1, 2, 0).numpy(), expected)
    with_fps = processor(str(folder), video_metadata={"fps": 4}, return_metadata=True)
    assert with_fps["video_metadata"][0].frames_indices == [0, 4, 8]
    # a video given as a list of frame paths (nested: a flat list of paths is a batch of videos)
    as_list = processor([[[str(folder / f"frame{index}.png") for index in range(3)]]])
    assert torch.equal(as_list["pixel_values_videos"], out["pixel_values_videos"][:3])


def test_images(processor):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8))
    portrait = Image.fromarray(rng.integers(0, 256, size=(50, 20, 3), dtype=np.uint8))
    out = processor.preprocess_images([image, portrait])
    assert out["pixel_values"].shape == (2, 3, 384, 384) and out["pixel_values"].dtype == torch.uint8
    assert out["pixel_values_dino"].shape == (2, 3, 378, 378)
    assert out["image_sizes"].tolist() == [[30, 40], [50, 20]]
    as_video = processor(np.asarray(image)[None])
    assert torch.equal(out["pixel_values"][:1], as_video["pixel_values_videos"])
    assert torch.equal(out["pixel_values_dino"][:1], as_video["pixel_values_videos_dino"])
    np.testing.assert_array_equal(
        out["pixel_values_dino"][1].permute(1, 2, 0).numpy(), reference_canvas(np.asarray(portrait), DINO_FILL, 378)
    )


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    import av

    folder = tmp_path_factory.mktemp("bad")
    good = make_video(folder / "good.mp4", fps=8, num_frames=24)
    data = good.read_bytes()
    files = {}
    files["empty"] = folder / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["noise"] = folder / "noise.mp4"
    files["noise"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    files["text"] = folder / "notes.mp4"
    files["text"].write_text("this is not a video\n" * 50)
    files["truncated"] = folder / "truncated.mp4"  # the index (moov) is at the end: cut off
    files["truncated"].write_bytes(data[: len(data) // 2])
    # index first ("faststart"), then cut: the header promises frames the file no longer has
    faststart = folder / "faststart.mp4"
    with av.open(str(good)) as source, av.open(str(faststart), "w", options={"movflags": "faststart"}) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.size:
                packet.stream = stream
                target.mux(packet)
    files["truncated_faststart"] = folder / "truncated_faststart.mp4"
    files["truncated_faststart"].write_bytes(faststart.read_bytes()[: int(faststart.stat().st_size * 0.6)])
    # a container whose video track has no frames at all
    files["no_frames"] = folder / "no_frames.mp4"
    container = av.open(str(files["no_frames"]), "w")
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 36, "yuv420p"
    container.start_encoding()
    container.close()
    # an AVI whose codec tag no decoder knows
    avi = bytearray(make_video(folder / "mpeg4.avi", fps=8, num_frames=16).read_bytes())
    for tag in (b"FMP4", b"XVID", b"DIVX", b"mp4v"):
        while (position := avi.find(tag)) >= 0:
            avi[position : position + 4] = b"QQQQ"
    files["unsupported_codec"] = folder / "unsupported_codec.avi"
    files["unsupported_codec"].write_bytes(bytes(avi))
    files["too_short"] = make_video(folder / "too_short.mp4", fps=8, num_frames=5)
    return files


def test_missing_file(processor, tmp_path):
    missing = tmp_path / "does_not_exist.mp4"
    with pytest.raises(FileNotFoundError, match="does_not_exist.mp4"):
        processor(str(missing))
    with pytest.raises(FileNotFoundError, match="does_not_exist.mp4"):
        processor(missing)  # a pathlib.Path too


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind,message",
    [
        ("empty", "Could not open video"),
        ("noise", "Could not open video"),
        ("text", "Could not open video"),
        ("truncated", "truncated or corrupt"),
        ("truncated_faststart", "truncated or corrupt"),
        ("no_frames", "no video stream|no frames|Could not open"),
        ("unsupported_codec", "unsupported codec|Could not open"),
    ],
)
def test_bad_files_raise_value_error_naming_the_file(processor, bad_files, backend, kind, message):
    path = bad_files[kind]
    with pytest.raises(ValueError, match=message) as error:
        processor(str(path), video_backend=backend)
    assert path.name in str(error.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_shorter_than_one_step_keeps_its_first_frame(processor, bad_files, backend):
    # 5 frames at 8 fps, sampled at 1 fps (one frame every 8): the reference's range(0, 5, 8) takes frame 0.
    out = processor(str(bad_files["too_short"]), video_backend=backend, return_metadata=True)
    assert out["video_num_frames"].tolist() == [1]
    assert list(out["video_metadata"][0].frames_indices) == [0]
    assert out["video_num_frames"].tolist() == processor(str(bad_files["too_short"]), fps=0.1)["video_num_frames"].tolist()


def test_unsupported_codec_message_with_pyav(processor, bad_files):
    with pytest.raises(ValueError, match="unsupported codec"):
        processor(str(bad_files["unsupported_codec"]), video_backend="pyav")


def test_other_bad_arguments(processor, tmp_path, videos):
    with pytest.raises(ValueError, match="no frames"):
        processor(np.zeros((0, 36, 64, 3), dtype=np.uint8))
    empty_folder = tmp_path / "empty_folder"
    empty_folder.mkdir()
    with pytest.raises(ValueError, match="empty_folder"):
        processor(str(empty_folder))
    with pytest.raises(ValueError, match="video_backend"):
        processor(str(videos["landscape_25"]), video_backend="opencv")
    with pytest.raises(ValueError, match="resize_backend"):
        processor(str(videos["landscape_25"]), resize_backend="cv2")
    with pytest.raises(ValueError, match="num_frames=1000"):
        processor(str(videos["landscape_25"]), num_frames=1000)
    with pytest.raises(ValueError, match="mutually exclusive"):
        processor(str(videos["landscape_25"]), num_frames=2, fps=1)


# ------------------------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------------------------


def test_save_and_load(tmp_path, videos):
    from transformers import AutoVideoProcessor

    import longvu_hf  # noqa: F401  (registers the Auto classes)

    custom = LongVUVideoProcessor(max_frames=2, default_fps=2.0, resize_backend="torch")
    custom.save_pretrained(tmp_path)
    reloaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, LongVUVideoProcessor)
    assert reloaded.auto_map == {"AutoVideoProcessor": "video_processing_longvu.LongVUVideoProcessor"}
    assert reloaded.to_dict() == custom.to_dict()
    assert (reloaded.max_frames, reloaded.default_fps, reloaded.resize_backend) == (2, 2.0, "torch")
    path = str(videos["landscape_25"])
    assert torch.equal(reloaded(path)["pixel_values_videos"], custom(path)["pixel_values_videos"])
    assert reloaded(path, return_metadata=True)["video_metadata"][0].frames_indices == [0, 48]


@pytest.mark.parametrize("backend, extra", [("torchcodec", "longvu-hf[torchcodec]"), ("decord", "longvu-hf[decord]")])
def test_missing_backend_names_the_extra(processor, videos, monkeypatch, backend, extra):
    from longvu_hf.processing import video_decoding

    usable = video_decoding._backend_usable
    monkeypatch.setattr(video_decoding, "_backend_usable", lambda name: name != backend and usable(name))
    with pytest.raises(ImportError, match=re.escape(extra)):
        processor(str(videos["landscape_25"]), video_backend=backend)


def test_every_decoder_is_installed_where_required():
    # CI installs the [video] extra and sets LONGVU_REQUIRE_ALL_BACKENDS=1: a decoder missing there fails here
    # instead of silently skipping the backend-parametrised tests.
    if os.environ.get("LONGVU_REQUIRE_ALL_BACKENDS") != "1":
        pytest.skip("only where LONGVU_REQUIRE_ALL_BACKENDS=1 (CI)")
    assert set(BACKENDS) == {"torchcodec", "decord", "pyav"}, f"usable decoders: {BACKENDS}"
