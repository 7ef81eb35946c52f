"""transformers' `VideoProcessingTestMixin` on `LongVUVideoProcessor`.

LongVU's video processor differs from most transformers video processors in two ways the tester accounts for:

* the frames of all videos are concatenated on one axis, Qwen2-VL style: `pixel_values_videos` is
  (total frames, 3, S, S) and `video_num_frames` gives each video's share (`assert_expected_videos_shape`);
* every frame is padded to a square and resized to a fixed side for each encoder (`size` for SigLIP, `dino_size` for
  DINOv2), so there is no shortest-edge resize and no crop.

The tester uses small squares (20 and 18 px instead of 384 and 378) to keep the run short.
"""

from __future__ import annotations

import unittest

import numpy as np
from transformers.testing_utils import require_torch, require_vision
from transformers_release_tests.test_video_processing_common import VideoProcessingTestMixin, prepare_video_inputs

from longvu_hf import LongVUVideoProcessor
from longvu_hf.configuration_longvu import SIGLIP_IMAGE_MEAN, SIGLIP_IMAGE_STD


class LongVUVideoProcessingTester:
    def __init__(
        self,
        parent,
        batch_size=5,
        num_frames=4,
        num_channels=3,
        min_resolution=12,
        max_resolution=48,
        size=None,
        dino_size=None,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.num_channels = num_channels
        self.min_resolution = min_resolution
        self.max_resolution = max_resolution
        self.size = size if size is not None else {"height": 20, "width": 20}
        self.dino_size = dino_size if dino_size is not None else {"height": 18, "width": 18}

    def prepare_video_processor_dict(self):
        return {
            "do_resize": True,
            "size": self.size,
            "dino_size": self.dino_size,
            "image_mean": list(SIGLIP_IMAGE_MEAN),
            "image_std": list(SIGLIP_IMAGE_STD),
            "do_convert_rgb": True,
        }

    def expected_output_video_shape(self, videos):
        """Shape of one video's frames: (frames, 3, S, S). Videos without a frame rate keep every frame."""
        return self.num_frames, 3, self.size["height"], self.size["width"]

    def prepare_video_inputs(self, equal_resolution=False, return_tensors="pil"):
        return prepare_video_inputs(
            batch_size=self.batch_size,
            num_frames=self.num_frames,
            num_channels=self.num_channels,
            min_resolution=self.min_resolution,
            max_resolution=self.max_resolution,
            equal_resolution=equal_resolution,
            return_tensors=return_tensors,
        )


# The mixin's `assert_expected_videos_shape` hook (in 5.24, not in 5.18) lets concatenated frames be checked; without
# it, the test_call_* tests assert a stacked shape.
HAS_SHAPE_HOOK = hasattr(VideoProcessingTestMixin, "assert_expected_videos_shape")
NO_SHAPE_HOOK = (
    "This release's mixin asserts a stacked (videos, frames, C, H, W) shape and has no `assert_expected_videos_shape` "
    "hook; LongVU concatenates frames"
)


@require_torch
@require_vision
class LongVUVideoProcessingTest(VideoProcessingTestMixin, unittest.TestCase):
    fast_video_processing_class = LongVUVideoProcessor

    def setUp(self):
        super().setUp()
        self.video_processor_tester = LongVUVideoProcessingTester(self)

    @property
    def video_processor_dict(self):
        return self.video_processor_tester.prepare_video_processor_dict()

    def assert_expected_videos_shape(self, encoded_videos, expected_output_video_shape, num_videos):
        # Frames of all videos are concatenated (Qwen2-VL style): (num_videos * frames, 3, S, S).
        frames, *frame_shape = expected_output_video_shape
        self.assertEqual(tuple(encoded_videos.shape), (num_videos * frames, *frame_shape))

    @unittest.skipUnless(HAS_SHAPE_HOOK, NO_SHAPE_HOOK)
    def test_call_pil(self):
        super().test_call_pil()

    @unittest.skipUnless(HAS_SHAPE_HOOK, NO_SHAPE_HOOK)
    def test_call_numpy(self):
        super().test_call_numpy()

    @unittest.skipUnless(HAS_SHAPE_HOOK, NO_SHAPE_HOOK)
    def test_call_pytorch(self):
        super().test_call_pytorch()

    @unittest.skipUnless(HAS_SHAPE_HOOK, NO_SHAPE_HOOK)
    def test_nested_input(self):
        super().test_nested_input()

    def test_video_processor_properties(self):
        video_processor = self.fast_video_processing_class(**self.video_processor_dict)
        for name in ("do_resize", "size", "dino_size", "image_mean", "image_std", "dino_image_mean", "do_convert_rgb"):
            self.assertTrue(hasattr(video_processor, name), name)

    def test_video_processor_from_dict_with_kwargs(self):
        # LongVU's sizes are squares (no shortest edge, no crop): an int size means an S x S square.
        video_processor = self.fast_video_processing_class.from_dict(self.video_processor_dict)
        self.assertEqual(video_processor.size, {"height": 20, "width": 20})
        self.assertEqual(video_processor.dino_size, {"height": 18, "width": 18})

        video_processor = self.fast_video_processing_class.from_dict(self.video_processor_dict, size=42, dino_size=40)
        self.assertEqual(video_processor.size, {"height": 42, "width": 42})
        self.assertEqual(video_processor.dino_size, {"height": 40, "width": 40})
        video = np.zeros((2, 30, 50, 3), dtype=np.uint8)
        outputs = video_processor(video, return_tensors="pt")
        self.assertEqual(tuple(outputs["pixel_values_videos"].shape), (2, 3, 42, 42))
        self.assertEqual(tuple(outputs["pixel_values_videos_dino"].shape), (2, 3, 40, 40))

    @unittest.skip(
        "Asserts a stacked (videos, frames, C, H, W) shape without `assert_expected_videos_shape`; LongVU concatenates "
        "frames (RGBA/grayscale to RGB: tests/test_video_processing.py)"
    )
    def test_call_numpy_4_channels(self):
        pass

    @unittest.skip(
        "Expects transformers' fps rule (frames * fps / video fps) on a stacked axis; LongVU keeps the reference's "
        "round(video fps / fps) stride and concatenates frames (sampling: tests/test_video_processing.py)"
    )
    def test_call_sample_frames(self):
        pass
