"""Adapters that plug LongVU into other tools.

- `lmms_eval`: LongVU as an lmms-eval model (`lmms-eval --model longvu ...`); install with
  `pip install "longvu-hf[lmms-eval]"`. See `docs/evaluation.md`.

Each adapter module imports its tool at import time, so import the one you use. This file only holds the lmms-eval
entry point, which must stay light: lmms-eval loads it while it builds its model registry, before any model is chosen.
"""

LMMS_EVAL_MODEL_ID = "longvu"
LMMS_EVAL_MODEL_CLASS = "longvu_hf.integrations.lmms_eval.LongVULmmsEvalModel"


def lmms_eval_model_manifest():
    """The `lmms_eval.models` entry point (setup.cfg): registers `--model longvu` (alias `longvu_hf`); lmms-eval
    imports the class only when the model is used.

    Example:

    ```python
    >>> from lmms_eval.models import get_model
    >>> get_model("longvu").__name__
    'LongVULmmsEvalModel'
    ```
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=LMMS_EVAL_MODEL_ID, chat_class_path=LMMS_EVAL_MODEL_CLASS, aliases=("longvu_hf",))
