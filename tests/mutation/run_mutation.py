"""Mutation testing of the compression, video-feature, live-video and per-call settings code with mutmut.

mutmut (PyPI, `pip install -e ".[mutation]"`) puts one plausible one-line bug at a time into the code (a changed
comparison, number, operator, argument, ...) and runs the tests that call the changed function; a mutant that no test
notices "survives". Every survivor must be killed by a test or explained in `equivalent_mutants.toml` (beside this
file) as equivalent: this script exits with status 1 when one is neither, and prints each with its diff.

    python tests/mutation/run_mutation.py            # CI subset: the frame-selection, encode-once, live and
                                                     # settings functions (about 330 mutants)
    python tests/mutation/run_mutation.py --full     # every function of the four files (about 1500 mutants; long)

The run happens in a copy of the project (`--workdir`, default a temporary folder) so that the working tree is never
mutated; with a `--workdir` that already holds a run, mutmut resumes it and re-tests only what changed. The settings
are in `mutmut.cfg` beside this file. Mutants that only change the text of an error message are counted apart (they
change no behaviour a test should pin down word for word).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PACKAGE = "longvu_hf"

# The mutated files and, for the CI subset, the functions of each that the subset runs (mutmut's names: `x_f` for a
# function, `xǁClassǁmethod` for a method).
FILES = {
    "modeling/compression.py": [
        "x_visual_budget", "x_frame_budget", "x_resolution_flags", "x_dino_window_scores", "x_select_frames_in_window",
        "x_cap_frame_indices", "x_select_frames_in_windows", "x_cap_selected_frames", "x_select_frames",
    ],
    "modeling/video_features.py": [
        "xǁEncodedVideoǁframes_for", "x_model_fingerprint", "x_settings_difference",
    ],
    "modeling/live_video.py": ["xǁLongVULiveVideoǁ*"],
    "modeling/configuration_longvu.py": ["xǁCompressionSettingsǁ*"],
}


# The CI subset's tests: fast ones (no towers, or a tiny model built once), which kill the subset's mutants in seconds;
# the full run uses the selection of mutmut.cfg (the model-level guards too).
CI_TESTS = [
    "tests/test_selection_units.py",
    "tests/test_compression.py",
    "tests/test_mutation_guards.py::test_budget_arithmetic_of_the_test_setting",
    "tests/test_mutation_guards.py::test_resolution_flags_at_both_band_edges",
    "tests/test_mutation_guards.py::test_dino_score_equal_to_the_threshold_drops_the_frame",
    "tests/test_video_features.py::test_the_fingerprint_covers_every_tower_and_the_aggregator",
    "tests/test_video_features.py::test_the_fingerprint_ignores_what_features_do_not_depend_on",
    "tests/test_video_features.py::test_the_fingerprint_survives_saving_and_loading_the_model",
    "tests/test_video_features.py::test_the_fingerprint_does_not_depend_on_the_order_of_config_fields",
]


def module_name(relative: str) -> str:
    return f"{PACKAGE}." + relative.removesuffix(".py").replace("/", ".")


def mutant_globs(full: bool) -> list[str]:
    globs = []
    for relative, functions in FILES.items():
        if full and not relative.endswith("configuration_longvu.py"):
            globs.append(f"{module_name(relative)}.*")
        else:
            globs.extend(f"{module_name(relative)}.{function}__mutmut_*" for function in functions)
    return globs


def prepare(workdir: Path, tests_at: str | None, full: bool) -> None:
    """A copy of the sources and tests (the tests of commit `tests_at`, if given, to measure older tests against
    today's code), with mutmut's section appended to the copy's setup.cfg (for the CI subset, with `CI_TESTS` as the
    test selection)."""
    for name in ("src", "tests"):
        target = workdir / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(REPO / name, target, symlinks=False, ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    config = (HERE / "mutmut.cfg").read_text()
    if not full:
        config = re.sub(r"(pytest_add_cli_args_test_selection =\n)(\s+.*\n)+",
                        lambda m: m.group(1) + "".join(f"    {test}\n" for test in CI_TESTS), config)
    if tests_at:
        for path in (workdir / "tests").glob("*.py"):
            path.unlink()
        archive = subprocess.run(["git", "archive", tests_at, "tests"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "--exclude=tests/fixtures"], cwd=workdir, input=archive.stdout, check=True)
        # the test selection may name files or tests that commit did not have
        config = "\n".join(line for line in config.splitlines()
                           if not re.match(r"\s+(--deselect=)?tests/", line) or _exists(workdir, line))
    setup = (REPO / "setup.cfg").read_text()
    (workdir / "setup.cfg").write_text(setup + "\n" + config + "\n")
    for name in ("model_card.md", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, workdir / name)


def _exists(workdir: Path, line: str) -> bool:
    """Whether a test-selection line (`tests/file.py` or `tests/file.py::test`) names something in the copy."""
    path, _, test = line.split("=")[-1].strip().partition("::")
    file = workdir / path
    return file.exists() and (not test or re.search(rf"^def {re.escape(test)}\(", file.read_text(), re.M) is not None)


def leave_out_other_functions(workdir: Path) -> None:
    """For the CI subset: mark every function of the mutated files that the subset does not run with mutmut's
    `# pragma: no mutate block` (in the copy only), so that mutmut neither generates nor traces their mutants."""
    for relative, functions in FILES.items():
        path = workdir / "src" / PACKAGE / relative
        lines = path.read_text().splitlines()
        wanted = [re.compile(re.escape(f).replace(r"\*", ".*") + "$") for f in functions]
        tree = ast.parse("\n".join(lines))
        for owner, node in _functions(tree):
            name = f"x_{node.name}" if owner is None else f"xǁ{owner}ǁ{node.name}"
            colon_line = node.body[0].lineno - 2  # the signature ends on the line before the body (0-based)
            if any(w.match(name) for w in wanted) or not lines[colon_line].rstrip().endswith(":"):
                continue
            lines[colon_line] += "  # pragma: no mutate block"
        path.write_text("\n".join(lines) + "\n")


def _functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield None, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    yield node.name, item


def mutmut(workdir: Path, *arguments: str, capture: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "mutmut", *arguments], cwd=workdir, env=env, text=True,
                          capture_output=capture)


def statuses(workdir: Path) -> dict[str, str]:
    result = mutmut(workdir, "results", "--all", "true")
    found = {}
    for line in result.stdout.splitlines():
        match = re.match(r"\s*(\S+__mutmut_\d+): (.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


# -- what a mutant changed -----------------------------------------------------------------------------------------------


def function_sources(mutated_file: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(mutated_file.read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and "__mutmut_" in node.name:
            found[node.name] = node
    return found


class _BlankMessages(ast.NodeTransformer):
    """Replace the strings inside `raise` statements (error messages) by one constant."""

    def visit_Raise(self, node):
        for child in ast.walk(node):
            if isinstance(child, ast.Constant) and isinstance(child.value, str):
                child.value = "<message>"
        return node


def _normalised(node: ast.FunctionDef, blank_messages: bool) -> str:
    node = ast.parse(ast.unparse(node)).body[0]
    node.name = "f"
    if blank_messages:
        node = _BlankMessages().visit(node)
    return ast.dump(node)


def describe(mutant: str, workdir: Path, cache: dict) -> dict:
    """The function, the changed lines (original, mutated) and whether only an error message changed."""
    module, name = mutant.rsplit(".", 1)
    relative = module.removeprefix(PACKAGE + ".").replace(".", "/") + ".py"
    if relative not in cache:
        cache[relative] = function_sources(workdir / "mutants" / "src" / PACKAGE / relative)
    functions = cache[relative]
    base = name.rsplit("__mutmut_", 1)[0]
    original, mutated = functions[base + "__mutmut_orig"], functions[name]
    before = ast.unparse(original).splitlines()
    after = ast.unparse(mutated).splitlines()
    removed, added = [], []
    for line in difflib.ndiff(before[1:], after[1:]):  # the def line differs by name only
        if line.startswith("- "):
            removed.append(line[2:].strip())
        elif line.startswith("+ "):
            added.append(line[2:].strip())
    readable = base.removeprefix("x_").replace("xǁ", "").replace("ǁ", ".")
    return {
        "function": f"{module.removeprefix(PACKAGE + '.')}.{readable}",
        "original": " / ".join(removed),
        "mutated": " / ".join(added),
        "message_only": _normalised(original, True) == _normalised(mutated, True),
    }


def load_equivalents() -> list[dict]:
    path = HERE / "equivalent_mutants.toml"
    entries = tomllib.loads(path.read_text()).get("mutant", []) if path.exists() else []
    for entry in entries:
        missing = {"function", "original", "mutated", "why"} - set(entry)
        if missing:
            raise SystemExit(f"{path}: an entry lacks {sorted(missing)}: {entry}")
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every function of the four files, not the CI subset")
    parser.add_argument("--workdir", type=Path, help="where the copy and mutmut's state live (default: temporary)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--tests-at", metavar="COMMIT", help="run the tests of COMMIT (to compare with older tests)")
    parser.add_argument("--all-tests", action="store_true",
                        help="the CI subset's mutants against mutmut.cfg's whole test selection (as --full runs)")
    arguments = parser.parse_args()

    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="longvu-mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    prepare(workdir, arguments.tests_at, arguments.full or arguments.all_tests)
    if not arguments.full:
        leave_out_other_functions(workdir)
    globs = mutant_globs(arguments.full)
    print(f"mutation run in {workdir}: {'all functions' if arguments.full else 'CI subset'}", flush=True)
    run = mutmut(workdir, "run", "--max-children", str(arguments.max_children), *globs, capture=False)
    if run.returncode not in (0, 1):
        print(f"mutmut run failed with status {run.returncode}")
        return 2
    wanted = [re.compile(re.escape(g).replace(r"\*", ".*") + "$") for g in globs]
    found = {m: s for m, s in statuses(workdir).items() if any(w.match(m) for w in wanted)}
    equivalents = load_equivalents()
    cache: dict = {}
    counts = {"killed": 0, "survived": 0, "equivalent": 0, "message only": 0, "other": 0}
    unexplained = []
    for mutant, status in sorted(found.items()):
        if status == "killed":
            counts["killed"] += 1
            continue
        if status in ("survived", "no tests"):
            info = describe(mutant, workdir, cache)
            if info["message_only"]:
                counts["message only"] += 1
                continue
            if any(e["function"] == info["function"] and e["original"] == info["original"]
                   and e["mutated"] == info["mutated"] for e in equivalents):
                counts["equivalent"] += 1
                continue
            counts["survived"] += 1
            unexplained.append((mutant, status, info))
            continue
        counts["other"] += 1  # timeout, suspicious, segfault, skipped: reported, not counted as killed
        unexplained.append((mutant, status, describe(mutant, workdir, cache)))
    behaviour = counts["killed"] + counts["survived"] + counts["equivalent"] + counts["other"]
    print(f"\n{len(found)} mutants in {time.monotonic() - started:.0f} s: {counts}")
    if behaviour:
        print(f"kill rate: {counts['killed']}/{behaviour} = {counts['killed'] / behaviour:.1%} of the mutants that "
              f"change behaviour; {counts['killed']}/{behaviour - counts['equivalent']} = "
              f"{counts['killed'] / max(behaviour - counts['equivalent'], 1):.1%} without the equivalent ones")
    for mutant, status, info in unexplained:
        print(f"\n{status.upper()}: {mutant}\n  function: {info['function']}\n  original: {info['original']}\n"
              f"  mutated:  {info['mutated']}")
    if arguments.workdir is None and not arguments.keep and not unexplained:
        shutil.rmtree(workdir, ignore_errors=True)
    if unexplained:
        print(f"\n{len(unexplained)} mutant(s) neither killed nor explained in {HERE / 'equivalent_mutants.toml'} "
              f"(work folder: {workdir}; `cd {workdir} && python -m mutmut show NAME` shows one)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
