from .processing_longvu import LongVUProcessor
from .video_processing_longvu import LongVUVideoProcessor

__all__ = ["LongVUProcessor", "LongVUVideoProcessor"]
