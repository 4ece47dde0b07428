"""Data records: reading and writing them (JSONL, Parquet) with errors that name the file, the row and the field,
checking their fields, and splitting off a held-out part."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.storage.contract import DATA_FILE

# Which fields each kind of data asset needs, and that they must be non-empty strings.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompts": ("prompt",),
}

MAX_LINE_BYTES = 1 << 20  # one record larger than 1 MiB is a mistake, not data


class DataError(ValueError):
    """Bad input data; the message names the file, the line or row, and the field."""

    def __init__(self, source: str | Path, message: str, row: int | None = None, field: str | None = None):
        where = str(source)
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.source, self.row, self.field = str(source), row, field


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line. Rows are numbered from 1 and are the file's line numbers.

    A blank line between records is an error, not skipped, so that "row N" in any later check of
    these records (field checks, data-source adapters, quality gates) is line N in an editor.
    Blank lines at the end of the file are allowed.
    """
    records: list[dict[str, Any]] = []
    blank_line: int | None = None
    with open(path, "rb") as handle:
        line_number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            line_number += 1
            if len(raw) > MAX_LINE_BYTES:
                # Reading at most MAX_LINE_BYTES + 1 bytes keeps a huge single line out of memory.
                raise DataError(path, f"line is longer than the {MAX_LINE_BYTES} bytes allowed for one record", row=line_number)
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(path, f"bytes that are not UTF-8 at byte {error.start + 1} of the line", row=line_number) from None
            if not line.strip():
                blank_line = blank_line or line_number
                continue
            if blank_line is not None:
                raise DataError(path, "blank line between records; remove it", row=blank_line)
            try:
                record = json.loads(line.rstrip("\r\n"))  # so a cut-off line reports its own last column
            except json.JSONDecodeError as error:
                raise DataError(path, f"malformed JSON ({error.msg} at column {error.colno})", row=line_number) from None
            if not isinstance(record, dict):
                raise DataError(path, f"expected a JSON object, got {type(record).__name__}", row=line_number)
            records.append(record)
    return records


def load_data(artifact_dir: Path) -> list[dict[str, Any]]:
    """The records of a data asset's artifact directory (sft_data, preference_data, ppo_prompts, eval_prompts)."""
    return read_jsonl(Path(artifact_dir) / DATA_FILE)


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a corrupt file
        raise DataError(path, f"not a readable Parquet file ({error})") from None
    return table.to_pylist()  # row N is the table's N-th row, counted from 1


def read_records(source: str | Path) -> list[dict[str, Any]]:
    """Load a local JSONL or Parquet file."""
    path = Path(source)
    if not path.exists():
        raise DataError(path, "file does not exist")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a .jsonl or .parquet file")
    if not path.is_file():
        raise DataError(path, "is not a regular file (a device, socket or pipe?); expected a .jsonl or .parquet file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise DataError(path, f"unsupported file type {suffix!r}; use .jsonl or .parquet")


def validate_records(records: Sequence[dict[str, Any]], kind: str, source: str | Path) -> None:
    """Every record has the kind's fields as non-empty strings; preference pairs differ."""
    if kind not in REQUIRED_FIELDS:
        raise ValueError(f"unknown data kind {kind!r}")
    if not records:
        raise DataError(source, "contains no records")
    for row, record in enumerate(records, start=1):
        for field in REQUIRED_FIELDS[kind]:
            if field not in record:
                raise DataError(source, "missing field", row=row, field=field)
            value = record[field]
            if not isinstance(value, str):
                raise DataError(source, f"expected a string, got {type(value).__name__}", row=row, field=field)
            if not value.strip():
                raise DataError(source, "empty string", row=row, field=field)
        if kind == "preference" and record["chosen"].strip() == record["rejected"].strip():
            raise DataError(source, "chosen and rejected are identical", row=row, field="rejected")


def load_user_records(source: str | Path, kind: str) -> list[dict[str, Any]]:
    records = read_records(source)
    validate_records(records, kind, source)
    return records


def split_held_out(records: Sequence[dict[str, Any]], fraction: float, seed: int):
    """Deterministic train / held-out split; the held-out part has at least one record."""
    indices = list(range(len(records)))
    random.Random(f"split:{seed}").shuffle(indices)
    n_held_out = max(1, round(len(records) * fraction)) if fraction > 0 else 0
    held_out = [records[i] for i in sorted(indices[:n_held_out])]
    train = [records[i] for i in sorted(indices[n_held_out:])]
    if not train:
        raise ValueError(f"{len(records)} records leave nothing to train on with held_out_fraction={fraction}")
    return train, held_out
