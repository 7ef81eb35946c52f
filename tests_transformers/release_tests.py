"""Import transformers' own common test mixins from the installed release's source distribution.

transformers ships its model test mixins (`tests/test_modeling_common.py`, `test_processing_common.py`,
`test_video_processing_common.py`, `test_configuration_common.py`) in the source distribution on PyPI, not in the
wheel. `prepare()` puts the tests of the *installed* release into a cache folder as the importable package
`transformers_release_tests` (downloading the sdist with pip when needed), so that our testers import the very mixins
a transformers model of that release must pass. Nothing from transformers' tests is kept in this repository.

The sdist lacks four files its mixins import: `generation/test_utils.py` (`GenerationTesterMixin`),
`exporters/test_export.py` (`ExportTesterMixin`), `utils/test_configuration_utils.py` (`config_common_kwargs`) and the
repository's `utils/fetch_hub_objects_for_ci.py`. Point `TRANSFORMERS_REPO_DIR` at a transformers checkout (a fork's
snapshot will do) to run the real `GenerationTesterMixin`; its `tests.*` imports are pointed at this package. Without
it, `GENERATION_MIXIN_AVAILABLE` is False and the generation tests are reported as not run. A snapshot may be older or
newer than the installed release: what its tests read that the release removed is rewritten in one place,
`SNAPSHOT_SKEW`, each entry with its reason. The other three are always
stand-ins: the export mixin is empty (LongVU cannot be exported: `_can_compile_fullgraph = False`),
`config_common_kwargs` is built from the installed `PreTrainedConfig()`'s own attributes (a checkout's copy belongs to
its own release), and URLs are left as they are (the tests run offline).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

PACKAGE = "transformers_release_tests"
CACHE_ROOT = Path(os.environ.get("TRANSFORMERS_TESTS_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "transformers-tests"))
MISSING_FROM_SDIST = {
    "generation/test_utils.py": "GenerationTesterMixin",
    "exporters/test_export.py": "ExportTesterMixin",
    "utils/test_configuration_utils.py": "config_common_kwargs",
}

STAND_INS = {
    "generation/test_utils.py": (
        "# Stand-in: the PyPI sdist has no tests/generation/test_utils.py (set TRANSFORMERS_REPO_DIR for the real one).\n"
        "GENERATION_MIXIN_AVAILABLE = False\n\n\n"
        "class GenerationTesterMixin:\n"
        "    all_generative_model_classes = ()\n"
    ),
    "exporters/test_export.py": (
        "# Stand-in: the PyPI sdist has no tests/exporters/test_export.py (set TRANSFORMERS_REPO_DIR for the real one).\n"
        "class ExportTesterMixin:\n"
        "    pass\n\n\n"
        "class ExportGenerateTesterMixin:\n"
        "    pass\n"
    ),
    "utils/test_configuration_utils.py": (
        "# Stand-in: the PyPI sdist has no tests/utils/test_configuration_utils.py; every attribute of a default\n"
        "# PreTrainedConfig, each with a value other than its default where that is unambiguous.\n"
        "from transformers import PreTrainedConfig\n\n"
        "def _changed(value):\n"
        "    if isinstance(value, bool):\n"
        "        return not value\n"
        "    if isinstance(value, int):\n"
        "        return value + 1\n"
        "    return value\n\n"
        "config_common_kwargs = {\n"
        "    key: _changed(value) for key, value in PreTrainedConfig().to_dict().items()\n"
        "    if isinstance(value, (bool, int)) and not key.startswith('_')\n"
        "}\n"
    ),
}


# Skew between a repository snapshot's generation tests and the installed release, handled here and nowhere else.
# Each entry: (what the snapshot's test code reads, what it reads instead, the installed release's attribute whose
# absence makes the rewrite necessary, the reason). A rewrite applies only when that attribute is gone, so a snapshot
# of the installed release's own era runs unchanged.
SNAPSHOT_SKEW = [
    (
        "model_class._is_stateful",
        "getattr(model_class, '_is_stateful', False)",
        (transformers.PreTrainedModel, "_is_stateful"),
        "transformers 5.25 removed `PreTrainedModel._is_stateful`; a model class without it is not stateful, which is "
        "what the snapshot's tests branch on (LongVU keeps a standard KV cache).",
    ),
]


def _reconcile_with_installed_release(source: str) -> str:
    """Rewrite what a snapshot's test code reads from transformers but the installed release no longer has."""
    for old, new, (owner, attribute), _reason in SNAPSHOT_SKEW:
        if not hasattr(owner, attribute):
            source = source.replace(old, new)
    return source


def _release_dir() -> Path:
    return CACHE_ROOT / transformers.__version__


def _download_sdist_tests(target: Path) -> None:
    """`pip download transformers==<installed> --no-binary :all: --no-deps`, then keep its `tests/` folder."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", f"transformers=={transformers.__version__}",
             "--no-binary", ":all:", "--no-deps", "-d", tmp],
            check=True,
        )
        (archive,) = Path(tmp).glob("transformers-*.tar.gz")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if "/tests/" in m.name and m.name.split("/tests/", 1)[1]]
            for member in members:
                member.name = member.name.split("/tests/", 1)[1]
            tar.extractall(target, members=members, filter="data")


def prepare() -> Path:
    """Make `transformers_release_tests` importable for the installed release; returns the package folder."""
    root = _release_dir()
    package = root / PACKAGE
    if not (package / "test_modeling_common.py").exists():
        staging = root / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        _download_sdist_tests(staging)
        shutil.rmtree(package, ignore_errors=True)
        staging.rename(package)
    repo = os.environ.get("TRANSFORMERS_REPO_DIR")
    for relative, stand_in in STAND_INS.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        # Only the generation mixin is taken from the checkout: its export mixin is of no use (LongVU cannot be
        # exported) and its configuration utilities belong to the checkout's release, not the installed one.
        real = Path(repo) / "tests" / relative if repo and relative.startswith("generation/") else None
        if real is not None and real.exists():
            marker = "\nGENERATION_MIXIN_AVAILABLE = True\n" if relative.startswith("generation/") else ""
            # The repository's test files import each other as `tests.*`; here that package is PACKAGE.
            source = re.sub(r"^from tests\.", f"from {PACKAGE}.", real.read_text(), flags=re.MULTILINE)
            source = _reconcile_with_installed_release(source)
            path.write_text(source + marker)
        else:
            path.write_text(stand_in)
    (package / "__init__.py").touch()
    # The tests run offline: URLs are left as they are.
    (root / "fetch_hub_objects_for_ci.py").write_text(
        "def url_to_local_path(url, return_url_if_not_found=True):\n    return url\n"
    )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return package
