"""Scoring streamed records and writing the final report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from .protocols import PROTOCOLS, BenchmarkProtocol, get_protocol

BREAKDOWN_NAMES = {"videomme": "duration", "mvbench": "task", "mlvu": "task_type", "egoschema": None}
COMPRESSION_FIELDS = ("frames_sampled", "frames_kept", "frames_high_res", "visual_tokens")


@lru_cache(maxsize=1)
def load_benchmark_metric():
    """The packaged `benchmark_accuracy` evaluate module, loaded by path (works offline)."""
    import evaluate

    from .benchmark_accuracy import BENCHMARK_ACCURACY_PATH

    return evaluate.load(BENCHMARK_ACCURACY_PATH)


def scored_letter(record: dict, protocol: BenchmarkProtocol) -> str:
    """The letter a record counts as under `protocol` ("" = no answer, always wrong)."""
    letter = (record.get("parsed") or {}).get(protocol.answer_parser)
    return letter or protocol.fallback_letter or ""


def score_records(records: Sequence[dict], protocol: BenchmarkProtocol, categories: Sequence[str]) -> dict:
    """Accuracy and breakdown of the answered questions that have a reference answer."""
    scored = [r for r in records if not r.get("error") and r.get("answer")]
    if not scored:
        return {"accuracy": None, "score": None, "score_name": None, "per_category": {}, "category_mean": None,
                "num_samples": 0, "num_correct": 0}
    return load_benchmark_metric().compute(
        predictions=[scored_letter(r, protocol) for r in scored],
        references=[r["answer"] for r in scored],
        categories=[r.get("category") or "" for r in scored],
        benchmark=protocol.benchmark,
        expected_categories=list(categories),
    )


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "total": sum(values)}


def compression_summary(records: Sequence[dict]) -> dict:
    """Frames and visual tokens per question, from each answer's compression report."""
    answered = [r for r in records if not r.get("error")]
    summary = {name: _stats([r[name] for r in answered if r.get(name) is not None]) for name in COMPRESSION_FIELDS}
    summary["paths"] = dict(Counter(r.get("compression_path") for r in answered if r.get("compression_path")))
    return summary


def build_report(
    records: Sequence[dict], protocol: BenchmarkProtocol, run_settings: dict, categories: Sequence[str]
) -> dict:
    """The final JSON report: settings, counts, the score and breakdown under `protocol`, the other protocol's score
    from the same generations, compression statistics and the list of errors."""
    errors = [{"id": r["id"], "error": r["error"]} for r in records if r.get("error")]
    answered = [r for r in records if not r.get("error")]
    result = score_records(records, protocol, categories)
    unparsable = sum(1 for r in answered if not (r.get("parsed") or {}).get(protocol.answer_parser))
    report = {
        "benchmark": protocol.benchmark,
        "protocol": protocol.to_dict(),
        "run": run_settings,
        "counts": {
            "questions": len(records),
            "answered": len(answered),
            "errors": len(errors),
            "scored": result["num_samples"],
            "correct": result["num_correct"],
            "without_reference_answer": sum(1 for r in answered if not r.get("answer")),
            "unparsable": unparsable,
            "fallback_used": unparsable if protocol.fallback_letter else 0,
            "with_subtitles": sum(1 for r in answered if r.get("subtitles_used")),
        },
        "score": result["score"],
        "score_name": result["score_name"],
        "accuracy": result["accuracy"],
        "category_mean": result["category_mean"],
        "breakdown": {"by": BREAKDOWN_NAMES[protocol.benchmark], "categories": result["per_category"]}
        if BREAKDOWN_NAMES[protocol.benchmark]
        else None,
        "other_protocols": {},
        "compression": compression_summary(records),
        "complete": not errors,
        "errors": errors,
        "notes": "Accuracies are percentages over the scored questions (answered, with a reference answer). "
        "Questions that failed (e.g. a missing video) are not scored: they are counted in counts.errors and listed "
        "in errors.",
    }
    for name in PROTOCOLS:
        if name != protocol.name:
            other = score_records(records, get_protocol(protocol.benchmark, name), categories)
            report["other_protocols"][name] = {"score": other["score"], "accuracy": other["accuracy"]}
    return report


__all__ = ["build_report", "compression_summary", "load_benchmark_metric", "score_records", "scored_letter"]
