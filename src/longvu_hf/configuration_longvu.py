# Copyright 2026 The LongVU-HF Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""`longvu_hf.configuration_longvu`, kept importable: the configuration lives in `modeling/configuration_longvu.py`,
beside the model file, as in a transformers model folder.

The files that Hub remote code copies (`remote_code.py`) import `modeling/configuration_longvu.py` directly: both files
flatten to the name `configuration_longvu.py`, so only that one may be among them.
"""

from .modeling.configuration_longvu import (
    DINO_IMAGE_MEAN,
    DINO_IMAGE_STD,
    DINO_POSITION_INTERPOLATIONS,
    SIGLIP_IMAGE_MEAN,
    SIGLIP_IMAGE_STD,
    VIDEO_SIZE_CONVENTIONS,
    CompressionSettings,
    LongVUConfig,
)

__all__ = [
    "DINO_IMAGE_MEAN",
    "DINO_IMAGE_STD",
    "DINO_POSITION_INTERPOLATIONS",
    "SIGLIP_IMAGE_MEAN",
    "SIGLIP_IMAGE_STD",
    "VIDEO_SIZE_CONVENTIONS",
    "CompressionSettings",
    "LongVUConfig",
]
