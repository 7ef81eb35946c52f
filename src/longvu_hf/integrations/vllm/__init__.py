"""Serving LongVU with vLLM: the towers and the compression run here, the language model runs in vLLM's engine.

- `register()`: the `vllm.general_plugins` entry point (setup.cfg). vLLM calls it in each of its processes; it makes
  `LongVUForConditionalGeneration` folders (converted checkpoints) loadable by vLLM (`model.LongVUForVLLM`).
- `LongVUEngine` (`engine.py`): videos and questions in, answers and compression reports out, decoded by vLLM;
  `AsyncLongVUEngine` streams them (vLLM's async engine).
- `server.py`: an OpenAI-compatible HTTP endpoint (`python -m longvu_hf.integrations.vllm.server --model DIR`).

Install with `pip install "longvu-hf[vllm]"`. Nothing in longvu-hf imports this package unless vLLM is used.

Example:

```python
>>> from longvu_hf.integrations.vllm import LongVUEngine
>>> from vllm import SamplingParams
>>> engine = LongVUEngine("LongVU_Qwen2_7B-hf", tensor_parallel_size=1)
>>> answers = engine.generate([("video.mp4", "What happens?")], SamplingParams(temperature=0, max_tokens=64))
>>> answers[0].text, answers[0].compression.path
```
"""

from __future__ import annotations

# The architecture converted folders declare (config.json) and the class vLLM builds for it (imported lazily by vLLM,
# in its own processes).
ARCHITECTURE = "LongVUForConditionalGeneration"
MODEL_CLASS = "longvu_hf.integrations.vllm.model:LongVUForVLLM"


def register() -> None:
    """The `vllm.general_plugins` entry point: LongVU's config with transformers, its model with vLLM.

    vLLM may call it several times and in several processes; it only records names (the model module is imported
    when vLLM builds a LongVU model).
    """
    import longvu_hf  # noqa: F401  (registers model_type "longvu" with AutoConfig, so vLLM reads converted folders)
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


def __getattr__(name: str):
    if name in ("AsyncLongVUEngine", "LongVUEncoder", "LongVUEngine", "LongVUAnswer", "LongVURequest"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCHITECTURE", "AsyncLongVUEngine", "LongVUAnswer", "LongVUEncoder", "LongVUEngine", "LongVURequest",
           "register"]
