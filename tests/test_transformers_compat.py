"""The one place where supported transformers releases differ (`longvu_hf.transformers_compat`)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from longvu_hf import LongVUForConditionalGeneration
from longvu_hf.transformers_compat import (
    CACHE_NAME,
    SUPPORTED_TRANSFORMERS,
    cache_of,
    check_transformers_version,
)


def test_supported_range_matches_the_package_metadata():
    setup = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert re.search(r"transformers(>=[0-9.]+,<[0-9.]+)", setup).group(1).replace(".0", "") == (
        SUPPORTED_TRANSFORMERS.replace(".0", "")
    )


@pytest.mark.parametrize("version", ["4.57.6", "5.17.0", "6.0.0", "6.1.0.dev0"])
def test_unsupported_release_is_refused_in_one_line(version):
    with pytest.raises(ImportError) as error:
        check_transformers_version(version)
    message = str(error.value)
    assert "\n" not in message and SUPPORTED_TRANSFORMERS in message and version in message


@pytest.mark.parametrize("version", ["5.18.0", "5.24.0", "5.99.1", "5.30.0.dev0"])
def test_supported_release_is_accepted(version):
    check_transformers_version(version)


def test_forward_shows_the_installed_cache_name_and_accepts_the_other(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_model import make_tiny_model

    model = make_tiny_model()
    assert CACHE_NAME in inspect.signature(model.forward).parameters
    ids = torch.tensor([[5, 6, 7]])
    first = model(input_ids=ids, use_cache=True)
    assert cache_of(first) is not None
    legacy = "past_key_values" if CACHE_NAME == "cache" else "cache"
    step = {legacy: cache_of(model(input_ids=ids, use_cache=True)), "input_ids": torch.tensor([[8]]), "use_cache": True}
    reference = model(input_ids=torch.tensor([[8]]), use_cache=True, **{CACHE_NAME: cache_of(first)})
    if CACHE_NAME == "cache":
        with pytest.warns(FutureWarning, match="past_key_values"):
            other = model(**step)
    else:
        other = model(**step)
    torch.testing.assert_close(other.logits, reference.logits)
    with pytest.raises(ValueError, match="once"):
        model(input_ids=torch.tensor([[8]]), **{CACHE_NAME: cache_of(first), legacy: cache_of(first)})
    assert isinstance(model, LongVUForConditionalGeneration)
