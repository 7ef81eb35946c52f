from .compression_report import CompressionReport, CompressionReports, ImageCompressionReport, VideoBudget
from .modeling_longvu import LongVUForConditionalGeneration, LongVUModel, LongVUPreTrainedModel
from .live_video import LongVULiveVideo
from .video_features import EncodedVideo, LongVUVideoFeatures

__all__ = [
    "CompressionReport",
    "CompressionReports",
    "ImageCompressionReport",
    "VideoBudget",
    "EncodedVideo",
    "LongVUForConditionalGeneration",
    "LongVULiveVideo",
    "LongVUModel",
    "LongVUPreTrainedModel",
    "LongVUVideoFeatures",
]
