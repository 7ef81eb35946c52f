from .modeling_longvu import LongVUForConditionalGeneration, LongVUModel, LongVUPreTrainedModel
from .live_video import LongVULiveVideo
from .video_features import EncodedVideo, LongVUVideoFeatures

__all__ = [
    "EncodedVideo",
    "LongVUForConditionalGeneration",
    "LongVULiveVideo",
    "LongVUModel",
    "LongVUPreTrainedModel",
    "LongVUVideoFeatures",
]
