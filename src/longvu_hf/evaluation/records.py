"""Per-question results on disk: one JSONL file per process, appended as questions finish, so that an interrupted run
resumes where it stopped and several processes never write to the same file.

```
OUTPUT_DIR/
  run.json                         # the settings that decide the generations; a resume must match them
  predictions.process0.jsonl       # streamed, one record per question (process k writes ...process{k}.jsonl)
  predictions.jsonl                # merged, in dataset order (written at the end by the main process)
  report.json
```
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence

RUN_FILE = "run.json"
MERGED_FILE = "predictions.jsonl"
REPORT_FILE = "report.json"


def shard_file(output_dir: str, process_index: int) -> str:
    return os.path.join(output_dir, f"predictions.process{process_index}.jsonl")


def append_record(path: str, record: dict) -> None:
    """Append one record and flush it, so a crash loses at most the question being answered."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()


def end_partial_line(path: str) -> None:
    """Terminate a line cut by an interruption, so the next record starts on a line of its own."""
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def _read_jsonl(path: str) -> Iterable[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                # A line cut by an interruption: that question is simply answered again.
                continue


def read_records(output_dir: str) -> dict[str, dict]:
    """All records streamed so far by any process (a later record of a question replaces an earlier one, so a retried
    error is superseded by its new result)."""
    records: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "predictions.process*.jsonl"))):
        for record in _read_jsonl(path):
            if "id" in record:
                records[str(record["id"])] = record
    return records


def pending_ids(all_ids: Sequence[str], records: dict[str, dict], retry_errors: bool = True) -> list[str]:
    """The questions still to answer, in dataset order: never answered, or (with `retry_errors`) failed before."""
    pending = []
    for question_id in all_ids:
        record = records.get(question_id)
        if record is None or (retry_errors and record.get("error")):
            pending.append(question_id)
    return pending


def ordered_records(all_ids: Sequence[str], records: dict[str, dict]) -> list[dict]:
    """The records of `all_ids` in dataset order; raises if any question has none (a process did not finish)."""
    missing = [question_id for question_id in all_ids if question_id not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} questions have no result (first: {missing[:3]}); run again to resume")
    return [records[question_id] for question_id in all_ids]


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)


def check_run_settings(output_dir: str, settings: dict) -> None:
    """Refuse to resume into a folder whose results came from different settings (they would be mixed)."""
    path = os.path.join(output_dir, RUN_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        previous = json.load(handle)
    changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
    if changed:
        details = ", ".join(f"{key}: {previous.get(key)!r} -> {settings.get(key)!r}" for key in changed)
        raise ValueError(
            f"{output_dir} holds results of a run with other settings ({details}); use another --output folder "
            "(results of different settings are never mixed)"
        )


__all__ = [
    "MERGED_FILE",
    "REPORT_FILE",
    "RUN_FILE",
    "append_record",
    "check_run_settings",
    "end_partial_line",
    "ordered_records",
    "pending_ids",
    "read_records",
    "shard_file",
    "write_json",
    "write_jsonl",
]
