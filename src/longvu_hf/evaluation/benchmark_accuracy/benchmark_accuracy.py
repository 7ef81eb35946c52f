"""Multiple-choice accuracy with the official breakdowns of LongVU's four benchmarks, as an `evaluate` module.

Self-contained (it only imports `datasets` and `evaluate`), so it loads offline by path:

```python
>>> import evaluate
>>> from longvu_hf.evaluation import BENCHMARK_ACCURACY_PATH
>>> metric = evaluate.load(BENCHMARK_ACCURACY_PATH)  # or the path of this file
>>> result = metric.compute(predictions=["A", "B", ""], references=["A", "C", "D"],
...                         categories=["short", "short", "long"], benchmark="videomme")
>>> round(result["score"], 2), result["per_category"]["short"]["accuracy"]
(33.33, 50.0)
```
"""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = """
Accuracy of multiple-choice answers (option letters), in percent, overall and per category, with the headline score
each benchmark reports:

- videomme: overall accuracy; categories are the durations (short / medium / long).
- mvbench: mean of the per-task accuracies over its 20 tasks (equal to the overall accuracy on the full release,
  which has 200 questions per task); categories are the tasks.
- mlvu: M-avg, the mean of the per-task accuracies over its 7 multiple-choice task types; categories are the types.
- egoschema: overall accuracy on the questions with public answers.

A prediction that is empty (an unparsable answer under the strict protocol) never matches.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): predicted letters; "" for an unparsable answer.
    references (`list[str]`): correct letters.
    categories (`list[str]`, *optional*): the breakdown key of each question.
    benchmark (`str`, *optional*): "videomme", "mvbench", "mlvu" or "egoschema"; selects the headline `score`.
        Without it, `score` is the overall accuracy.
    expected_categories (`list[str]`, *optional*): categories that must appear in the breakdown even with no
        question (reported with `num_samples` 0 and `accuracy` None, and left out of the means).
Returns:
    `accuracy` (overall, %), `num_samples`, `num_correct`, `per_category` ({category: {accuracy, num_samples,
    num_correct}}), `category_mean` (mean of the category accuracies, %), `score` and `score_name`.
"""

_CITATION = """
@inproceedings{shen2025longvu,
  title={LongVU: Spatiotemporal Adaptive Compression for Long Video-Language Understanding},
  author={Shen, Xiaoqian and Xiong, Yunyang and Zhao, Changsheng and Wu, Lemeng and Chen, Jun and Zhu, Chenchen and
          Liu, Zechun and Xiao, Fanyi and Varadarajan, Balakrishnan and Bordes, Florian and others},
  booktitle={ICML},
  year={2025}
}
"""

HEADLINE = {
    "videomme": ("accuracy", "overall accuracy"),
    "egoschema": ("accuracy", "overall accuracy"),
    "mvbench": ("category_mean", "mean accuracy over tasks"),
    "mlvu": ("category_mean", "M-avg (mean accuracy over task types)"),
}


def _percent(correct: int, total: int) -> float | None:
    return 100.0 * correct / total if total else None


class BenchmarkAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, categories=None, benchmark=None, expected_categories=None):
        if benchmark is not None and benchmark not in HEADLINE:
            raise ValueError(f"Unknown benchmark {benchmark!r}; expected one of {sorted(HEADLINE)}")
        if categories is None:
            categories = [""] * len(predictions)
        if len(categories) != len(predictions):
            raise ValueError(f"Got {len(categories)} categories for {len(predictions)} predictions")
        per_category: dict[str, list[int]] = {name: [0, 0] for name in (expected_categories or [])}
        correct_total = 0
        for prediction, reference, category in zip(predictions, references, categories):
            if reference in (None, ""):
                raise ValueError("Every reference must be an option letter; drop unanswered questions before scoring")
            hit = int(bool(prediction) and prediction.strip().upper() == reference.strip().upper())
            correct_total += hit
            counts = per_category.setdefault(category or "", [0, 0])
            counts[0] += hit
            counts[1] += 1
        breakdown = {
            name: {"accuracy": _percent(correct, total), "num_samples": total, "num_correct": correct}
            for name, (correct, total) in per_category.items()
        }
        scored = [entry["accuracy"] for entry in breakdown.values() if entry["accuracy"] is not None]
        result = {
            "accuracy": _percent(correct_total, len(predictions)),
            "num_samples": len(predictions),
            "num_correct": correct_total,
            "per_category": breakdown,
            "category_mean": sum(scored) / len(scored) if scored else None,
        }
        key, name = HEADLINE.get(benchmark, ("accuracy", "overall accuracy"))
        result["score"], result["score_name"] = result[key], name
        return result
