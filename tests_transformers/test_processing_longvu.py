"""transformers' `ProcessorTesterMixin` on `LongVUProcessor` (tiny offline tokenizer + `LongVUVideoProcessor`).

What the tester adapts, and why:

* LongVU writes ONE placeholder per video or image and the model expands it to the compressed token count, so the
  processor does not expand placeholders in the text.
* Images go through the video processor (`preprocess_images`): the processor's attributes are only `tokenizer` and
  `video_processor`, so the mixin's image-processor tests skip themselves, while its tests that pass `images=` to the
  processor (e.g. `test_model_input_names`) do run.
* The tests run offline (`HF_HUB_OFFLINE=1`): the one that loads a Hub image gets a local one.
"""

from __future__ import annotations

import importlib.util
import os
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image
from transformers.testing_utils import require_torch, require_vision
from transformers_release_tests import test_processing_common
from transformers_release_tests.test_processing_common import ProcessorTesterMixin

import longvu_hf  # noqa: F401  (registers the Auto classes)
from longvu_hf import LongVUProcessor, LongVUVideoProcessor


def _load_tests_conftest():
    """`tests/conftest.py` (its module name `conftest` is taken by this folder's own conftest)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("longvu_tests_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tiny_tokenizer = _load_tests_conftest().make_tiny_tokenizer


@require_vision
@require_torch
class LongVUProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = LongVUProcessor

    @classmethod
    def _setup_tokenizer(cls):
        # Word-level vocabulary with the placeholders as special tokens and the default (right) padding side.
        words = ("lower", "newer", "upper", "older", "longer", "string")
        return make_tiny_tokenizer(extra_words=words, padding_side=None)

    @classmethod
    def _setup_video_processor(cls):
        # Small squares instead of 384/378 px keep the run short; the pad + resize path is the same.
        return LongVUVideoProcessor(size={"height": 20, "width": 20}, dino_size={"height": 18, "width": 18})

    def test_processor_text_has_no_visual(self):
        # Its chat-template part loads an image from the Hub; serve a local image instead (offline runs).
        image_path = os.path.join(self.tmpdirname, "local_image.png")
        Image.fromarray(np.random.randint(0, 256, size=(30, 40, 3), dtype=np.uint8)).save(image_path)
        with mock.patch.object(test_processing_common, "url_to_local_path", lambda url, **kwargs: image_path):
            super().test_processor_text_has_no_visual()

    @unittest.skip(
        "Writes an image placeholder but passes no image (it keys images on an `image_processor` attribute; LongVU's "
        "go through its video processor); test_model_input_names covers text + images + videos"
    )
    def test_processor_with_multiple_inputs(self):
        pass

    @unittest.skip(
        "Writes an image placeholder but passes no image (it keys images on an `image_processor` attribute; LongVU's "
        "go through its video processor); LongVU's replacement is the placeholder itself, expanded by the model"
    )
    def test_replacement_offsets(self):
        pass

    @unittest.skip(
        "Expects one `pixel_values_videos` row per video unless `num_frames_per_video`/`video_grid_thw` is returned; "
        "LongVU concatenates frames and returns their counts as `video_num_frames`, its model's input"
    )
    def test_apply_chat_template_decoded_video_0(self):
        pass

    @unittest.skip(
        "Downloads Hub videos, and expects one `pixel_values_videos` row per video unless `num_frames_per_video` is "
        "returned; LongVU concatenates frames and returns their counts as `video_num_frames`, its model's input"
    )
    def test_apply_chat_template_video_0(self):
        pass

    @unittest.skip(
        "Downloads Hub videos, and expects one `pixel_values_videos` row per video unless `num_frames_per_video` is "
        "returned; LongVU concatenates frames and returns their counts as `video_num_frames`, its model's input"
    )
    def test_apply_chat_template_video_1(self):
        pass

    @unittest.skip(
        "Downloads a Hub video, and expects sampling of a list of frame images to be refused; LongVU samples those too "
        "(given a frame rate), with the reference's rules (tests/test_video_processing.py, tests/test_processing.py)"
    )
    def test_apply_chat_template_video_frame_sampling(self):
        pass
