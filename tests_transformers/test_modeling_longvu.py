"""transformers' `ModelTesterMixin` and `GenerationTesterMixin` on LongVU (tiny random weights).

LongVU's processor writes one placeholder per image or video and the model expands it inside `forward` to the
compressed token count, so the sequence lengths the mixins expect from the model are the expanded ones
(`LongVUModelTester.seq_length`), while `input_ids` hold one placeholder per item.
"""

from __future__ import annotations

import dataclasses
import unittest
from unittest import mock

import torch
from transformers.models.auto import modeling_auto
from transformers_release_tests.generation import test_utils as generation_test_utils
from transformers_release_tests.test_configuration_common import ConfigTester
from transformers_release_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

from longvu_hf import LongVUConfig, LongVUForConditionalGeneration, LongVUModel, LongVUPreTrainedModel

GenerationTesterMixin = generation_test_utils.GenerationTesterMixin
GENERATION_MIXIN_AVAILABLE = getattr(generation_test_utils, "GENERATION_MIXIN_AVAILABLE", True)


class LongVUModelTester:
    """Tiny geometry: 28 px towers (2x2 patches), a 2x2 encoder grid, 4 queries per frame (6 tokens with the row
    newlines), one image and one two-frame video per sample."""

    def __init__(self, parent, batch_size: int = 2, text_length: int = 10, num_frames: int = 2):
        self.parent = parent
        self.batch_size = batch_size
        self.text_length = text_length  # input_ids length, one placeholder per image and per video included
        self.num_frames = num_frames
        self.image_token_index = 3
        self.video_token_index = 4
        self.pad_token_id = 0
        self.is_training = True
        self.text_config = {
            "model_type": "qwen2",
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": 2,
            "bos_token_id": 1,
            "tie_word_embeddings": False,
        }
        self.vision_config = {
            "model_type": "siglip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        }
        self.dino_config = {
            "model_type": "dinov2",
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "image_size": 28,
            "patch_size": 14,
        }
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.hidden_size = self.text_config["hidden_size"]
        self.vocab_size = self.text_config["vocab_size"]
        tokens_per_item = 2 * 2 + 2  # 2x2 queries plus one newline per row
        self.seq_length = text_length - 2 + tokens_per_item * (1 + num_frames)
        self.expansion = self.seq_length - text_length  # extra positions the two placeholders expand to

    def get_config(self) -> LongVUConfig:
        return LongVUConfig(
            text_config=self.text_config,
            vision_config=self.vision_config,
            dino_config=self.dino_config,
            dino_image_size=28,
            encoder_grid_size=2,
            num_queries=4,
            lowres_grid_size=2,
            aggregator_hidden_size=16,
            aggregator_num_layers=1,
            aggregator_num_heads=2,
            image_token_index=self.image_token_index,
            video_token_index=self.video_token_index,
            max_context_length=256,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.text_length], self.vocab_size - 5) + 5
        input_ids[:, 1] = self.image_token_index
        input_ids[:, 2] = self.video_token_index
        frames = (self.batch_size, self.num_frames, 3, 28, 28)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": floats_tensor([self.batch_size, 3, 28, 28]),
            "pixel_values_dino": floats_tensor([self.batch_size, 3, 28, 28]),
            "image_sizes": torch.tensor([[28, 28]] * self.batch_size),
            "pixel_values_videos": floats_tensor(list(frames)),
            "pixel_values_videos_dino": floats_tensor(list(frames)),
            "video_num_frames": torch.tensor([self.num_frames] * self.batch_size),
            "video_sizes": torch.tensor([[28, 28]] * self.batch_size),
            "labels": input_ids.clone(),  # the model sets -100 on the expanded placeholders
        }
        return config, inputs


# The mixins tell base models from heads by transformers' own name tables; an in-tree LongVU would be listed there.
IN_TREE_NAMES = {
    "MODEL_MAPPING_NAMES": "LongVUModel",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": "LongVUForConditionalGeneration",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES": "LongVUForConditionalGeneration",
}


class LongVUModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (LongVUModel, LongVUForConditionalGeneration)
    all_generative_model_classes = (LongVUForConditionalGeneration,)
    pipeline_model_mapping = {"image-text-to-text": LongVUForConditionalGeneration}
    _is_composite = True
    # The feature-shape tests run: the tower outputs of `get_video_features` follow the layout of the pixels (this
    # tester stacks videos: one row per video), `pooler_output` holds one tensor per video or image.

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for table, name in IN_TREE_NAMES.items():
            getattr(modeling_auto, table)["longvu"] = name

    @classmethod
    def tearDownClass(cls):
        for table in IN_TREE_NAMES:
            getattr(modeling_auto, table).pop("longvu", None)
        super().tearDownClass()

    def setUp(self):
        self.model_tester = LongVUModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=LongVUConfig,
            has_text_modality=False,
            common_properties=["image_token_id", "video_token_id"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_generation_mixin_is_the_real_one(self):
        if not GENERATION_MIXIN_AVAILABLE:
            self.skipTest(
                "GenerationTesterMixin not run: tests/generation/test_utils.py is not in transformers' PyPI sdist "
                "(set TRANSFORMERS_REPO_DIR to a transformers checkout to run it)"
            )

    def _check_generate_outputs(self, output, config, use_cache=False, num_return_sequences=1, num_beams=1):
        # `sequences` start with the caller's prompt (one placeholder per item, so that `out[:, len(prompt):]` is the
        # answer); the scores, attentions, hidden states and cache cover the expanded prompt. Check those in the
        # expanded positions: the same tokens after `expansion` more prompt positions.
        sequences = output.sequences
        padding = sequences.new_zeros(sequences.shape[0], self.model_tester.expansion)
        expanded = dataclasses.replace(output, sequences=torch.cat([padding, sequences], dim=1))
        super()._check_generate_outputs(expanded, config, use_cache, num_return_sequences, num_beams)

    def test_can_init_all_missing_weights(self):
        # transformers' `_initialize_weights` treats every model outside the `transformers` package as custom code and
        # then skips the modules that own no parameter themselves, so SigLIP's attention and MLP init (written on
        # those modules) never runs on the meta-device path of an out-of-tree model. Checked as transformers checks an
        # in-tree model: LongVU's `_init_weights`, with its towers', must cover every weight.
        with mock.patch.object(LongVUPreTrainedModel, "is_custom_code", classmethod(lambda cls: False)):
            super().test_can_init_all_missing_weights()

    def test_past_key_values_format(self):
        self.skipTest(
            "The cache holds the expanded prompt while `input_ids` hold one placeholder per item; the cache format is "
            "checked on expanded lengths by every dict-output generation test (`_check_generate_outputs`)"
        )

    def test_generate_from_random_inputs_embeds(self):
        self.skipTest(
            "A text-only test, but the tester's prompt holds image/video placeholders, which LongVU refuses without "
            "pixels (a ValueError by design); generation from inputs_embeds with pixels is tested by "
            "test_generate_from_inputs_embeds"
        )

    def test_forward_with_logits_to_keep(self):
        self.skipTest(
            "The logits cover the expanded sequence (the tester's seq_length), not `input_ids`' length, which this "
            "test expects; logits_to_keep on expanded positions is tested in "
            "tests/test_modeling.py::test_logits_to_keep_counts_expanded_positions"
        )
