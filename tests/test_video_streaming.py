"""Streaming a video file into the encoder: `iter_video_chunks` + `encode_video_stream` equal the one-shot path.

The videos are real files whose frames come in scenes (runs of one random image), so that DINOv2 selection drops
frames where a case selects, and the chunks cut across selection windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from longvu_hf import LongVUVideoProcessor
from longvu_hf.processing.video_chunks import VideoChunks

from tiny_model import TINY_VIDEO_TOKEN_ID as V, make_tiny_model


def write_scene_video(path: Path, scenes: str, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    """A 1-fps H.264 file whose frame i shows scene `scenes[i]` (one random image per letter)."""
    import av

    generator = np.random.default_rng(seed)
    images = {name: generator.integers(0, 256, (height, width, 3), dtype=np.uint8) for name in sorted(set(scenes))}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "4", "preset": "ultrafast"}
        for name in scenes:
            for packet in stream.encode(av.VideoFrame.from_ndarray(images[name], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def prompt(length: int = 3) -> torch.Tensor:
    words = torch.arange(5, 5 + length)
    return torch.cat([words[:1], torch.tensor([V]), words[1:]]).unsqueeze(0)


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


@pytest.fixture(scope="module")
def processor():
    return LongVUVideoProcessor()


@pytest.mark.parametrize("chunk_frames", [1, 5, 16])
@pytest.mark.parametrize("resize_backend", ["pil", "torch"])
def test_chunks_hold_the_pixels_preprocess_gives(tmp_path, processor, chunk_frames, resize_backend):
    path = write_scene_video(tmp_path / "clip.mp4", "ABCDEFGHIJKLMNOPQRSTUVW")  # 23 frames: a short last chunk
    whole = processor(str(path), resize_backend=resize_backend, return_metadata=True)
    chunks = processor.iter_video_chunks(str(path), chunk_frames=chunk_frames, resize_backend=resize_backend)
    assert isinstance(chunks, VideoChunks)
    assert chunks.num_frames == 23 and len(chunks) == -(-23 // chunk_frames)
    assert chunks.video_size == tuple(whole["video_sizes"][0].tolist())
    assert chunks.timestamps == pytest.approx(whole["video_metadata"][0].timestamps)
    pieces = list(chunks)
    assert [len(p["pixel_values_videos"]) for p in pieces[:-1]] == [chunk_frames] * (len(pieces) - 1)
    for key in ("pixel_values_videos", "pixel_values_videos_dino"):
        assert torch.equal(torch.cat([p[key] for p in pieces]), whole[key])
    with pytest.raises(RuntimeError, match="already iterated"):
        list(chunks)


def test_chunks_are_decoded_as_they_are_consumed(tmp_path, processor):
    path = write_scene_video(tmp_path / "clip.mp4", "AB" * 24)
    decoded = []
    with processor.frame_progress(decoded.append):
        chunks = processor.iter_video_chunks(str(path), chunk_frames=4, decode_batch_size=4)
        assert sum(decoded) == 0  # opening samples the frames; nothing is decoded before iteration
        iterator = iter(chunks)
        next(iterator)
        # the first chunk, plus at most the batches the bounded decode queue runs ahead
        assert sum(decoded) <= 4 + 3 * 4 < 48
        rest = list(iterator)
    assert sum(decoded) == 48 and len(rest) == 11


def test_one_video_at_a_time(tmp_path, processor):
    path = write_scene_video(tmp_path / "clip.mp4", "ABC")
    with pytest.raises(ValueError, match="takes one video, got 2"):
        processor.iter_video_chunks([str(path), str(path)])
    with pytest.raises(ValueError, match="chunk_frames"):
        processor.iter_video_chunks(str(path), chunk_frames=0)


# scenes, per-call context, whether every prompt selects (the features then hold the kept frames only)
STREAM_CASES = {
    "no-selection": ("ABCDEFGH", 1024, False),
    "selection": ("A" * 16 + "B" * 14 + "CD" + "EFGHIJKL", 300, True),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
@pytest.mark.parametrize("chunk_frames", [3, 16])
def test_streamed_features_answer_like_the_whole_video(tmp_path, model, processor, case, chunk_frames):
    scenes, context, selects = STREAM_CASES[case]
    settings = {"max_context_length": context}
    path = write_scene_video(tmp_path / "clip.mp4", scenes)
    whole = processor(str(path))
    streamed = model.encode_video_stream(processor.iter_video_chunks(str(path), chunk_frames=chunk_frames),
                                         compression_settings=settings)
    one_shot = model.encode_videos(**whole, compression_settings=settings)
    (a,), (b,) = streamed, one_shot
    assert a.num_input_frames == b.num_input_frames == len(scenes)
    assert torch.equal(a.candidate_indices, b.candidate_indices)
    assert torch.equal(a.selected_indices, b.selected_indices)
    assert a.all_frames_kept == b.all_frames_kept == (not selects)
    if selects:
        assert len(a.selected_indices) < len(scenes)  # selection really dropped frames
    torch.testing.assert_close(a.sva, b.sva, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        from_stream = model(input_ids=prompt(), video_features=streamed, compression_settings=settings)
        from_pixels = model(input_ids=prompt(), **whole, compression_settings=settings)
    assert from_stream.compression[0] == from_pixels.compression[0]
    torch.testing.assert_close(from_stream.logits, from_pixels.logits, rtol=1e-4, atol=1e-5)


def test_streaming_past_the_frame_cap(tmp_path, processor):
    capped = make_tiny_model(max_frames_after_selection=6)
    scenes = "".join("ABCDEFGHIJKLMNOP"[i % 16] for i in range(32))  # distinct neighbours: selection keeps many
    settings = {"max_context_length": 300}
    path = write_scene_video(tmp_path / "clip.mp4", scenes)
    streamed = capped.encode_video_stream(processor.iter_video_chunks(str(path), chunk_frames=5),
                                          compression_settings=settings)
    one_shot = capped.encode_videos(**processor(str(path)), compression_settings=settings)
    assert len(streamed[0].selected_indices) == 6  # the cap, not selection, decided
    assert torch.equal(streamed[0].selected_indices, one_shot[0].selected_indices)
    torch.testing.assert_close(streamed[0].sva, one_shot[0].sva, rtol=1e-4, atol=1e-5)


def test_a_decoding_error_reaches_the_caller(model):
    def broken():
        yield {"pixel_values_videos": torch.zeros(2, 3, 384, 384, dtype=torch.uint8),
               "pixel_values_videos_dino": torch.zeros(2, 3, 378, 378, dtype=torch.uint8)}
        raise ValueError("Video clip.mp4: the decoder stopped")

    with pytest.raises(ValueError, match="decoder stopped"):
        model.encode_video_stream(broken(), video_size=(36, 64))
    with pytest.raises(ValueError, match="video_size"):
        model.encode_video_stream(iter([]))


@pytest.mark.parametrize("flags", [{"do_resize": False}, {"do_pad": False}, {"do_rescale": True, "do_normalize": True}])
def test_chunks_honour_the_processor_flags(tmp_path, processor, flags):
    path = write_scene_video(tmp_path / "clip.mp4", "ABCDEFG")
    whole = processor(str(path), **flags)
    pieces = list(processor.iter_video_chunks(str(path), chunk_frames=3, **flags))
    for key in ("pixel_values_videos", "pixel_values_videos_dino"):
        assert torch.equal(torch.cat([p[key] for p in pieces]), whole[key])


def test_the_stream_tells_the_chunks_where_the_towers_are(tmp_path, model, processor, monkeypatch):
    """`encode_video_stream` hands the towers' device to `VideoChunks.use_device` before decoding starts (on CUDA,
    torchcodec's GPU decoder; here the CPU decoder stays) and the features are unchanged."""
    path = write_scene_video(tmp_path / "clip.mp4", "aabbbcc")
    seen = []
    original = VideoChunks.use_device

    def recording(self, device):
        seen.append((torch.device(device), self._consumed))
        return original(self, device)

    monkeypatch.setattr(VideoChunks, "use_device", recording)
    streamed = model.encode_video_stream(processor.iter_video_chunks(str(path), chunk_frames=3))
    assert seen == [(model.model.video_encoder.dino_tower.device, False)]  # told once, before the first chunk
    whole = model.encode_videos(**processor(str(path)))
    assert torch.equal(streamed[0].selected_indices, whole[0].selected_indices)
    torch.testing.assert_close(streamed[0].sva, whole[0].sva, rtol=1e-4, atol=1e-5)
