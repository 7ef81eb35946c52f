"""transformers' `ConfigTester` on `LongVUConfig`: one test per common check, on the default config (the
Qwen2-7B video release) and on a tiny one with every top-level field changed from its default."""

from __future__ import annotations

import unittest

from tiny_model import tiny_config
from transformers_release_tests.test_configuration_common import ConfigTester

from longvu_hf import LongVUConfig

# Top-level (non sub-config) fields, each with a value other than its default.
NON_DEFAULT_FIELDS = {
    "video_token_index": 120,
    "image_token_index": 121,
    "dino_image_size": 252,
    "encoder_grid_size": 12,
    "aggregator_hidden_size": 32,
    "aggregator_num_layers": 2,
    "aggregator_num_heads": 4,
    "num_queries": 36,
    "highres": False,
    "lowres_grid_size": 4,
    "dino_threshold": 0.9,
    "dino_window_size": 8,
    "max_frames_after_selection": 100,
    "stc_window_size": 4,
    "stc_threshold": 0.8,
    "max_context_length": 1024,
    "context_margin": 8,
    "video_size_convention": "exact",
    "dino_position_interpolation": "exact",
    "vision_chunk_size": 16,
    "siglip_image_mean": [0.4, 0.4, 0.4],
    "siglip_image_std": [0.6, 0.6, 0.6],
    "dino_image_mean": [0.5, 0.5, 0.5],
    "dino_image_std": [0.25, 0.25, 0.25],
}


class _TinyModelTester:
    """What `ConfigTester` asks of a model tester: a composite config with non-default sub-configs."""

    def get_config(self) -> LongVUConfig:
        return tiny_config()


class LongVUConfigTest(unittest.TestCase):
    def setUp(self):
        self.model_tester = _TinyModelTester()
        common = {"has_text_modality": False, "common_properties": ["video_token_id", "image_token_id"]}
        self.config_tester = ConfigTester(self, config_class=LongVUConfig, **common, **NON_DEFAULT_FIELDS)
        self.default_config_tester = ConfigTester(self, config_class=LongVUConfig, **common)

    def test_config(self):
        self.default_config_tester.run_common_tests()
        self.config_tester.run_common_tests()

    def test_config_common_properties(self):
        self.config_tester.create_and_test_config_common_properties()

    def test_config_to_json_string(self):
        self.config_tester.create_and_test_config_to_json_string()

    def test_config_to_json_file(self):
        self.config_tester.create_and_test_config_to_json_file()

    def test_config_from_and_save_pretrained(self):
        self.config_tester.create_and_test_config_from_and_save_pretrained()

    def test_config_from_and_save_pretrained_subfolder(self):
        self.config_tester.create_and_test_config_from_and_save_pretrained_subfolder()

    def test_config_from_and_save_pretrained_composite(self):
        self.config_tester.create_and_test_config_from_and_save_pretrained_composite()

    def test_config_from_pretrained_custom_kwargs(self):
        self.config_tester.create_and_test_config_from_pretrained_custom_kwargs()

    def test_config_with_num_labels(self):
        self.config_tester.create_and_test_config_with_num_labels()

    def test_config_arguments_init(self):
        self.config_tester.check_config_arguments_init()

    def test_config_can_be_init_without_params(self):
        self.config_tester.check_config_can_be_init_without_params()

    def test_non_default_fields_are_kept(self):
        config = LongVUConfig(**NON_DEFAULT_FIELDS)
        defaults = LongVUConfig()
        for name, value in NON_DEFAULT_FIELDS.items():
            self.assertEqual(getattr(config, name), value, name)
            self.assertNotEqual(getattr(defaults, name), value, name)
        self.assertEqual((config.video_token_id, config.image_token_id), (120, 121))
        self.assertEqual(config.query_grid_size, 6)
