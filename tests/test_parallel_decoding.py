"""Parallel decoding (`decode_workers`): several decoders on segments cut at keyframes deliver exactly the frames of one
decoder, in order, with bounded memory; a worker's error is the single decoder's error; the GPU decoder falls back to
the CPU one where there is none."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from longvu_hf import LongVUVideoProcessor
from longvu_hf.processing import video_decoding
from longvu_hf.processing.video_decoding import (
    available_video_backends,
    decode_frames,
    open_frame_source,
    open_gpu_decoder,
    plan_decode_workers,
)

from conftest import make_video

BACKENDS = available_video_backends()
NUM_FRAMES, GOP = 160, 10


def write_short_gop_video(path: Path, num_frames: int = NUM_FRAMES, gop: int = GOP, bframes: int = 2) -> Path:
    """H.264 with a keyframe every `gop` frames and B-frames (non-reference frames the PyAV decoder skips)."""
    return make_video(path, fps=10, num_frames=num_frames, width=64, height=36,
                      x264_params=f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_short_gop_video(tmp_path_factory.mktemp("parallel") / "gops.mp4")


def collect(batches) -> list[tuple[int, np.ndarray]]:
    return [(slot, frame) for batch in batches for slot, frame in batch]


class ThreadRecorder:
    """Records which threads ran `iter_frames` of a source class (so that a silent fall-back to one worker fails)."""

    def __init__(self, monkeypatch, source_class):
        self.threads: set[str] = set()
        original = source_class.iter_frames

        def recording(source, indices, batch_size):
            self.threads.add(threading.current_thread().name)
            return original(source, indices, batch_size)

        monkeypatch.setattr(source_class, "iter_frames", recording)


# --------------------------------------------------------------------------------------------------------------------
# The same frames
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_deliver_the_single_decoders_frames(video, backend, workers, monkeypatch):
    source = open_frame_source(str(video), backend)
    assert source.keyframe_indices() == list(range(0, NUM_FRAMES, GOP))
    rng = np.random.default_rng(workers)
    requests = [
        np.arange(0, NUM_FRAMES, 3),  # 1-in-3 sampling: several frames in every GOP
        np.arange(5, NUM_FRAMES, 10),  # one frame per GOP, none a keyframe
        np.sort(rng.choice(NUM_FRAMES, 40, replace=False)),
        np.repeat(np.arange(0, NUM_FRAMES, 8), 2),  # a frame asked for twice
    ]
    for indices in requests:
        expected = collect(source.iter_frames(indices, 4))
        assert len(plan_decode_workers(indices, source.keyframe_indices(), workers, 4)) == workers
        recorder = ThreadRecorder(monkeypatch, type(source))
        got = collect(decode_frames(source, indices, 4, workers=workers))
        monkeypatch.undo()
        assert len(recorder.threads) == workers  # really decoded by `workers` decoders
        assert [slot for slot, _ in got] == list(range(len(indices)))  # every slot, in order
        assert [slot for slot, _ in got] == [slot for slot, _ in expected]
        for (_, frame), (_, reference) in zip(got, expected):
            np.testing.assert_array_equal(frame, reference)


@pytest.mark.parametrize("backend", BACKENDS)
def test_processor_and_chunks_equal_with_any_number_of_workers(video, backend):
    processor = LongVUVideoProcessor()
    kwargs = {"fps": 4, "video_backend": backend, "decode_batch_size": 4}
    single = processor(str(video), decode_workers=1, **kwargs)
    parallel = processor(str(video), decode_workers=4, **kwargs)
    assert single["video_num_frames"].tolist() == [80]  # every other frame (stride round(10 / 4))
    for key in ("pixel_values_videos", "pixel_values_videos_dino"):
        assert torch.equal(single[key], parallel[key])
    chunks = processor.iter_video_chunks(str(video), chunk_frames=16, decode_workers=2, **kwargs)
    streamed = list(chunks)
    assert [len(chunk["pixel_values_videos"]) for chunk in streamed] == [16] * 5
    assert torch.equal(torch.cat([chunk["pixel_values_videos_dino"] for chunk in streamed]),
                       single["pixel_values_videos_dino"])


def test_decode_workers_is_validated():
    processor = LongVUVideoProcessor()
    assert processor.decode_workers is None  # the machine's default (default_decode_workers)
    for bad in (0, -1):  # other types are refused by transformers' kwargs validation
        with pytest.raises(ValueError, match="decode_workers"):
            processor(np.zeros((2, 8, 8, 3), dtype=np.uint8), decode_workers=bad)


# --------------------------------------------------------------------------------------------------------------------
# How the video is split
# --------------------------------------------------------------------------------------------------------------------


def test_plan_cuts_at_keyframes_and_deals_segments_in_turn():
    keyframes = list(range(0, 100, 10))
    indices = np.arange(0, 100, 2)  # 5 sampled frames per GOP
    plan = plan_decode_workers(indices, keyframes, workers=2, segment_frames=4)
    assert len(plan) == 2
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(indices)))
    # Segments are whole GOPs (5 frames each here), dealt out in turn: worker 0 has GOPs 0, 2, 4, ...
    gops = [sorted({int(indices[slot]) // 10 for slot in slots}) for slots in plan]
    assert gops == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert not set(gops[0]) & set(gops[1])  # no GOP decoded twice


@pytest.mark.parametrize(
    "indices, keyframes, why",
    [
        (np.arange(0, 100, 2), [0], "a single keyframe"),
        (np.arange(0, 100, 2), None, "keyframes unknown"),
        (np.arange(0, 7), list(range(0, 100, 10)), "too few frames for two segments"),
        (np.arange(0, 100, 2)[::-1], list(range(0, 100, 10)), "indices out of order"),
    ],
)
def test_plan_uses_one_worker(indices, keyframes, why):
    assert len(plan_decode_workers(indices, keyframes, workers=4, segment_frames=4)) == 1, why


def test_single_keyframe_video_is_decoded_by_one_worker(tmp_path, monkeypatch):
    path = write_short_gop_video(tmp_path / "one_gop.mp4", num_frames=60, gop=300)
    source = open_frame_source(str(path), "pyav")
    assert source.keyframe_indices() == [0]
    recorder = ThreadRecorder(monkeypatch, type(source))
    got = collect(decode_frames(source, np.arange(0, 60, 2), 4, workers=4))
    assert [slot for slot, _ in got] == list(range(30))
    assert len(recorder.threads) == 1


# --------------------------------------------------------------------------------------------------------------------
# Errors and memory
# --------------------------------------------------------------------------------------------------------------------


def failing_from(monkeypatch, source_class, bad_index: int) -> None:
    """The source's decoder fails on frame `bad_index` as a corrupt file does."""
    original = source_class.iter_frames

    def iter_frames(source, indices, batch_size):
        for batch in original(source, indices, batch_size):
            if any(int(indices[slot]) == bad_index for slot, _ in batch):
                raise ValueError(f"Video {source.name} is corrupt: decoding failed (InvalidDataError: frame)")
            yield batch

    monkeypatch.setattr(source_class, "iter_frames", iter_frames)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_workers_error_is_the_single_decoders_error(video, backend, monkeypatch):
    processor = LongVUVideoProcessor()
    source_class = type(open_frame_source(str(video), backend))
    failing_from(monkeypatch, source_class, bad_index=120)  # in a late segment, not the first worker's
    errors = {}
    for workers in (1, 2, 4):
        before = threading.active_count()
        with pytest.raises(ValueError) as raised:
            processor(str(video), fps=4, video_backend=backend, decode_batch_size=4, decode_workers=workers)
        errors[workers] = str(raised.value)
        assert threading.active_count() == before  # every worker stopped
    assert errors[1] == errors[2] == errors[4]
    assert errors[1] == f"Video '{video}' is corrupt: decoding failed (InvalidDataError: frame)"
    assert "\n" not in errors[1]


def test_workers_stay_a_bounded_number_of_frames_ahead(video, monkeypatch):
    """A slow consumer: the workers stop once their queues are full instead of decoding the whole video."""
    source = open_frame_source(str(video), "pyav")
    produced = []
    original = type(source).iter_frames

    def counting(self, indices, batch_size):
        for batch in original(self, indices, batch_size):
            produced.append(len(batch))
            yield batch

    monkeypatch.setattr(type(source), "iter_frames", counting)
    workers, batch_size = 2, 4
    batches = decode_frames(source, np.arange(NUM_FRAMES), batch_size, workers=workers)
    consumed = len(next(batches))
    time.sleep(0.5)  # time enough to decode all 160 frames many times over
    # Per worker: one batch queued, one waiting to be queued, one in the consumer's reorder buffer, one being built.
    assert sum(produced) - consumed <= workers * 4 * batch_size
    rest = sum(len(batch) for batch in batches)
    assert consumed + rest == NUM_FRAMES


# --------------------------------------------------------------------------------------------------------------------
# GPU decoder: fail-over on machines without one
# --------------------------------------------------------------------------------------------------------------------


def test_gpu_decoder_falls_back_to_the_cpu_decoder(video):
    processor = LongVUVideoProcessor()
    source = open_frame_source(str(video), "pyav")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the fail-over is tested with a mock below")
    assert open_gpu_decoder(source, "cuda") is source  # no CUDA here: the CPU decoder stays
    assert open_gpu_decoder(source, "cpu") is source
    expected = processor(str(video), fps=2)["pixel_values_videos"]
    chunks = processor.iter_video_chunks(str(video), fps=2)
    chunks.use_device("cuda")
    assert torch.equal(torch.cat([chunk["pixel_values_videos"] for chunk in chunks]), expected)


@pytest.mark.skipif("torchcodec" not in BACKENDS, reason="torchcodec is not usable here")
def test_gpu_decoder_is_used_when_it_opens_and_failures_fall_back(video, monkeypatch):
    """With a stand-in for torchcodec's CUDA decoder (a CPU decoder that says it is on CUDA) the chunks decode
    with it; when opening it fails, with the CPU decoder."""
    opened = []

    class FakeCudaDecoder(video_decoding.TorchCodecFrameSource):
        def __init__(self, source, name, device=None, threads=0):
            super().__init__(source, name, threads=threads)
            self.device = device
            opened.append(self)

    monkeypatch.setattr(video_decoding, "TorchCodecFrameSource", FakeCudaDecoder)
    processor = LongVUVideoProcessor()
    expected = processor(str(video), fps=2, video_backend="pyav")["pixel_values_videos"]
    chunks = processor.iter_video_chunks(str(video), fps=2, video_backend="pyav")
    chunks.use_device("cuda:0")
    got = torch.cat([chunk["pixel_values_videos"] for chunk in chunks])
    assert [decoder.device for decoder in opened] == ["cuda:0"]
    assert torch.equal(got, expected)

    def no_cuda(*args, **kwargs):
        raise RuntimeError("Failed to get current CUDA device.")

    monkeypatch.setattr(video_decoding, "TorchCodecFrameSource", no_cuda)
    source = open_frame_source(str(video), "pyav")
    assert open_gpu_decoder(source, "cuda") is source
