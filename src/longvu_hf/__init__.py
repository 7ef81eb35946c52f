"""longvu-hf: LongVU (ICML 2025) as a transformers-native model.

Importing the package registers LongVU with the transformers Auto classes.
"""

from .transformers_compat import SUPPORTED_TRANSFORMERS  # first: refuses an unsupported transformers in one line

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
    AutoVideoProcessor,
)

from transformers.utils import is_torchvision_available  # noqa: E402

from .configuration_longvu import CompressionSettings, LongVUConfig  # noqa: E402
from .media_inputs import InputPolicy, InputRefused, MediaSource, resolve_media  # noqa: E402
from .modeling import (  # noqa: E402
    CompressionReport,
    ImageCompressionReport,
    LongVUForConditionalGeneration,
    LongVUModel,
    LongVUPreTrainedModel,
    LongVUVideoFeatures,
)
from .processing import LongVUProcessor, LongVUVideoProcessor

AutoConfig.register("longvu", LongVUConfig, exist_ok=True)
AutoModel.register(LongVUConfig, LongVUModel, exist_ok=True)
AutoModelForImageTextToText.register(LongVUConfig, LongVUForConditionalGeneration, exist_ok=True)
AutoModelForMultimodalLM.register(LongVUConfig, LongVUForConditionalGeneration, exist_ok=True)
if is_torchvision_available():  # transformers' video processors need it; vLLM's CPU build has no torchvision
    AutoVideoProcessor.register(LongVUConfig, LongVUVideoProcessor, exist_ok=True)
AutoProcessor.register(LongVUConfig, LongVUProcessor, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "CompressionReport",
    "CompressionSettings",
    "ImageCompressionReport",
    "InputPolicy",
    "InputRefused",
    "LongVUConfig",
    "LongVUForConditionalGeneration",
    "LongVUModel",
    "LongVUPreTrainedModel",
    "LongVUProcessor",
    "LongVUVideoFeatures",
    "LongVUVideoProcessor",
    "MediaSource",
    "resolve_media",
]
