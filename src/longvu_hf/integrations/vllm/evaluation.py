"""Benchmark evaluation decoded by vLLM: `VideoQAPredictor` whose answers come from a `LongVUEngine`.

Everything but the decoding is the predictor's (sampling, prompts, subtitles, each video encoded once, records);
`examples/evaluate_benchmarks.py --engine vllm` uses it.

Example:

```python
>>> engine = LongVUEngine("LongVU_Qwen2_7B-hf")
>>> predictor = VLLMVideoQAPredictor(engine, AutoProcessor.from_pretrained("LongVU_Qwen2_7B-hf"),
...                                  get_protocol("mlvu", "strict"))
>>> predictor(dataset[0])["parsed"]
```
"""

from __future__ import annotations

from ...evaluation.predictor import VideoQAPredictor
from ...modeling.compression_report import CompressionReport
from .engine import LongVUEngine, LongVURequest


class VLLMVideoQAPredictor(VideoQAPredictor):
    """`VideoQAPredictor` that encodes with the engine's encoder and decodes with vLLM (the protocol's greedy
    decoding and thresholds); records are the same as the transformers predictor's."""

    def __init__(self, engine: LongVUEngine, processor, protocol, **kwargs):
        super().__init__(engine.encoder, processor, protocol, **kwargs)
        self.engine = engine

    def generate(self, inputs) -> tuple[str, CompressionReport]:
        from vllm import SamplingParams

        if self.protocol.do_sample:
            sampling = SamplingParams(temperature=1.0, max_tokens=self.protocol.max_new_tokens)
        else:
            sampling = SamplingParams(temperature=0.0, max_tokens=self.protocol.max_new_tokens)
        ids = [int(t) for t, keep in zip(inputs["input_ids"][0].tolist(), inputs["attention_mask"][0].tolist()) if keep]
        request = LongVURequest(video=inputs["video_features"], prompt_token_ids=ids)
        [answer] = self.engine.generate([request], sampling, compression_settings=self.compression_settings)
        text = self.processor.decode(answer.token_ids, skip_special_tokens=True).strip()
        return text, answer.compression


__all__ = ["VLLMVideoQAPredictor"]
