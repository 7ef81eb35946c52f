from .modeling_longvu import LongVUForConditionalGeneration, LongVUModel, LongVUPreTrainedModel
from .video_features import EncodedVideo, LongVUVideoFeatures

__all__ = [
    "EncodedVideo",
    "LongVUForConditionalGeneration",
    "LongVUModel",
    "LongVUPreTrainedModel",
    "LongVUVideoFeatures",
]
