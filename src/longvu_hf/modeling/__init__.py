from .modeling_longvu import LongVUForConditionalGeneration, LongVUModel, LongVUPreTrainedModel

__all__ = ["LongVUForConditionalGeneration", "LongVUModel", "LongVUPreTrainedModel"]
