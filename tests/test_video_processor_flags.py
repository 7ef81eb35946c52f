"""Each `do_*` flag of `LongVUVideoProcessor` switches its own step, for videos and images, as in transformers'
processors (and as transformers' `VideoProcessingTestMixin` and structural linter expect): `do_rescale`,
`do_normalize`, `do_resize`, `do_pad`, `do_convert_rgb`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.testing_utils import CaptureLogger

from longvu_hf.processing import LongVUVideoProcessor
from longvu_hf.processing import video_processing_longvu
from longvu_hf.processing.frame_transforms import pad_and_resize_pil

SIGLIP_SIDE, DINO_SIDE = 24, 20


@pytest.fixture(scope="module")
def processor():
    return LongVUVideoProcessor(
        size={"height": SIGLIP_SIDE, "width": SIGLIP_SIDE}, dino_size={"height": DINO_SIDE, "width": DINO_SIDE}
    )


@pytest.fixture(scope="module")
def video():
    return np.random.default_rng(0).integers(0, 256, size=(2, 30, 40, 3), dtype=np.uint8)


def _stats(mean, std):
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("source", ["video", "image", "configured"])
def test_rescale_and_normalize_are_independent_steps(processor, video, source):
    """Neither flag: uint8. `do_rescale`: float32 pixels times `rescale_factor`. `do_normalize`: float32
    `(pixels - mean) / std` with each encoder's statistics. Both: the two steps, as the model computes them."""
    if source == "video":
        keys = ("pixel_values_videos", "pixel_values_videos_dino")

        def call(**flags):
            return processor(video, **flags)

    elif source == "image":
        keys = ("pixel_values", "pixel_values_dino")

        def call(**flags):
            return processor.preprocess_images(Image.fromarray(video[0]), **flags)

    else:  # the flags from the processor's configuration rather than the call

        def call(**flags):
            configured = LongVUVideoProcessor(**processor.to_dict() | flags)
            return configured(video)

        keys = ("pixel_values_videos", "pixel_values_videos_dino")
    raw = call()
    stats = [
        _stats(processor.image_mean, processor.image_std), _stats(processor.dino_image_mean, processor.dino_image_std)
    ]
    rescaled = call(do_rescale=True)
    normalized = call(do_normalize=True)
    both = call(do_rescale=True, do_normalize=True)
    for key, (mean, std) in zip(keys, stats):
        assert raw[key].dtype == torch.uint8
        pixels = raw[key].float()
        torch.testing.assert_close(rescaled[key], pixels * processor.rescale_factor, rtol=0, atol=0)
        torch.testing.assert_close(normalized[key], (pixels - mean) / std, rtol=0, atol=0)
        torch.testing.assert_close(both[key], (pixels * processor.rescale_factor - mean) / std, rtol=0, atol=0)


def test_one_step_without_the_other_warns_that_the_model_cannot_take_it(processor, video):
    logger = video_processing_longvu.logger
    logger.warning_once.cache_clear()
    for flags in ({"do_rescale": True}, {"do_normalize": True}):
        with CaptureLogger(logger) as captured:
            processor(video, **flags)
        assert "LongVU's model cannot take" in captured.out, flags
    with CaptureLogger(logger) as captured:
        processor(video, do_rescale=True, do_normalize=True)
        processor(video)
    assert captured.out == ""


def test_do_resize_false_keeps_the_frame_size(processor, video):
    """Without resizing, frames keep their size: padded to a square of their longer side with each encoder's colour
    (`do_pad`), or exactly as given (`do_pad=False`); a call whose frames differ in size is refused."""
    out = processor(video, do_resize=False)
    assert out["pixel_values_videos"].shape == out["pixel_values_videos_dino"].shape == (2, 3, 40, 40)
    frames = torch.from_numpy(video).permute(0, 3, 1, 2)
    for key, fill in (("pixel_values_videos", (127, 127, 127)), ("pixel_values_videos_dino", (123, 116, 103))):
        pixels = out[key]
        assert torch.equal(pixels[:, :, 5:35], frames)  # the (30, 40) frame, centred
        padding = torch.cat([pixels[:, :, :5], pixels[:, :, 35:]], dim=2)
        assert torch.equal(padding, torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1).expand_as(padding))
    unpadded = processor(video, do_resize=False, do_pad=False)
    assert torch.equal(unpadded["pixel_values_videos"], frames)
    assert torch.equal(unpadded["pixel_values_videos_dino"], frames)
    image = processor.preprocess_images(Image.fromarray(video[0]), do_resize=False, do_pad=False)
    assert torch.equal(image["pixel_values"], frames[:1])
    with pytest.raises(ValueError, match="`do_resize=False` keeps each frame's size"):
        processor([video, video[:, :20]], do_resize=False)
    # Resizing stays the default.
    assert processor(video)["pixel_values_videos"].shape == (2, 3, SIGLIP_SIDE, SIGLIP_SIDE)


def test_do_pad_false_resizes_the_whole_frame(processor, video):
    """Without padding, each frame is resized to the encoder's square as it is (stretched), PIL's bicubic as with
    padding."""
    out = processor(video, do_pad=False)
    padded = processor(video)
    for key, side in (("pixel_values_videos", SIGLIP_SIDE), ("pixel_values_videos_dino", DINO_SIDE)):
        expected = np.stack([pad_and_resize_pil(frame, (0, 0, 0), side, do_pad=False) for frame in video])
        assert torch.equal(out[key], torch.from_numpy(expected).permute(0, 3, 1, 2))
        assert not torch.equal(out[key], padded[key])


def test_do_convert_rgb_false_refuses_frames_that_are_not_rgb(processor, video):
    """By default RGBA and grayscale frames are converted to RGB; with `do_convert_rgb=False` they are not, and
    LongVU's encoders take RGB only, so they are refused in one line naming the flag. RGB frames are unaffected."""
    rgba = np.concatenate([video, np.full((*video.shape[:3], 1), 255, np.uint8)], axis=-1)
    assert processor(rgba)["pixel_values_videos"].shape == (2, 3, SIGLIP_SIDE, SIGLIP_SIDE)
    for frames in (rgba, [Image.fromarray(frame).convert("L") for frame in video], [video[0, :, :, 0]]):
        with pytest.raises(ValueError, match="`do_convert_rgb=False` but the input holds") as error:
            processor(frames, do_convert_rgb=False)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="`do_convert_rgb=False`.*mode 'RGBA'"):
        processor.preprocess_images(Image.fromarray(rgba[0]), do_convert_rgb=False)
    kept = processor(video, do_convert_rgb=False)
    assert torch.equal(kept["pixel_values_videos"], processor(video)["pixel_values_videos"])
