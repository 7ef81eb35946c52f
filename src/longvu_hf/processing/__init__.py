from .processing_longvu import LongVUProcessor, get_chat_template
from .video_processing_longvu import (
    LongVUVideoProcessor,
    LongVUVideoProcessorKwargs,
    reference_frame_stride,
    sample_frame_indices,
)

__all__ = [
    "LongVUProcessor",
    "LongVUVideoProcessor",
    "LongVUVideoProcessorKwargs",
    "get_chat_template",
    "reference_frame_stride",
    "sample_frame_indices",
]
