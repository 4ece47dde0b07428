"""Data records: reading and writing them (JSONL, Parquet, CSV; JSONL and CSV also gzip-compressed) with
errors that name the file, the row and the field, checking their fields, and splitting off a held-out part.

Row numbers count records from 1. In a JSONL file (`.jsonl`, `.json`, either with `.gz`) row N is line N,
blank lines between records being an error, so errors about such a file say both: `row 3 (line 3)`.
A gzip-compressed file is read as a stream, line by line, exactly like the plain one.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import zlib
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

# The local file types a source can be, by name ending, and how each is read (see `read_records`).
JSONL_TYPES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
CSV_TYPES = (".csv", ".csv.gz")
PARQUET_TYPES = (".parquet",)  # Parquet compresses inside the file (snappy, gzip, zstd): read as is
FILE_TYPES = (*JSONL_TYPES, *PARQUET_TYPES, *CSV_TYPES)


def file_type(path: str | Path) -> str:
    """The name ending that says how to read a file: `.jsonl`, or `.jsonl.gz` for a compressed one."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def is_line_numbered(source: str | Path) -> bool:
    """Whether row N of the source is line N of the file (JSONL, plain or compressed)."""
    return file_type(source) in JSONL_TYPES


def _supported_types() -> str:
    return ", ".join(FILE_TYPES[:-1]) + " or " + FILE_TYPES[-1]


class DataError(ValueError):
    """Bad input data; the message names the file, the row (and, in a JSONL file, its line) and the field."""

    def __init__(self, source: str | Path, message: str, row: int | None = None, field: str | None = None):
        where = str(source)
        if row is not None:
            where += f", row {row}" + (f" (line {row})" if is_line_numbered(source) else "")
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


def _open_binary(path: Path):
    """The file's bytes, decompressed as they are read when its name ends in `.gz`."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _json_error_text(error: json.JSONDecodeError) -> str:
    # Some messages end in "at" ("Unterminated string starting at"): the column completes them.
    joiner = " column" if error.msg.endswith(" at") else " at column"
    return f"malformed JSON ({error.msg}{joiner} {error.colno})"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line (`.gz`: gzip-compressed). Rows are numbered from 1 and are the file's line numbers.

    A blank line between records is an error, not skipped, so that "row N" in any later check of
    these records (field checks, data-source adapters, quality gates) is line N in an editor.
    Blank lines at the end of the file are allowed.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    blank_line: int | None = None
    line_number = 0
    with _open_binary(path) as handle:
        while raw := _read_line(path, handle, line_number):
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
                raise DataError(path, _json_error_text(error), row=line_number) from None
            if not isinstance(record, dict):
                raise DataError(path, f"expected a JSON object, got {type(record).__name__}", row=line_number)
            records.append(record)
    return records


def _read_line(path: Path, handle, lines_read: int) -> bytes:
    """The next line, at most MAX_LINE_BYTES + 1 bytes of it; a broken gzip stream names where it broke."""
    try:
        return handle.readline(MAX_LINE_BYTES + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        if lines_read == 0:
            raise DataError(path, f"not a readable gzip file ({error})") from None
        raise DataError(path, f"the gzip data is cut off or corrupt after line {lines_read} ({error})") from None


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


def read_csv(path: Path) -> list[dict[str, Any]]:
    """CSV with a header row (`.csv.gz`: gzip-compressed); every cell is a string (an empty cell is an empty string)."""
    if not path.exists():
        raise DataError(path, "file does not exist")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise DataError(path, "has no header row")
            rows = []
            for row_number, row in enumerate(reader, start=1):
                if None in row:  # DictReader files surplus cells under the key None
                    raise DataError(path, f"{len(reader.fieldnames) + len(row[None])} cells for {len(reader.fieldnames)} columns", row=row_number)
                missing = [name for name, value in row.items() if value is None]
                if missing:
                    raise DataError(path, f"row ends before column {missing[0]!r}", row=row_number, field=missing[0])
                rows.append(row)
    except UnicodeDecodeError as error:
        raise DataError(path, f"bytes that are not UTF-8 at byte {error.start}") from None
    except csv.Error as error:
        raise DataError(path, f"malformed CSV ({error})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(path, f"not a readable gzip file, or one cut off ({error})") from None
    return rows


def read_records(source: str | Path) -> list[dict[str, Any]]:
    """The rows of a local file, read by its type (`FILE_TYPES`: JSONL, Parquet, CSV; JSONL and CSV also as `.gz`)."""
    path = Path(source)
    if not path.exists():
        raise DataError(path, "file does not exist")
    if path.is_dir():
        raise DataError(path, f"is a directory, expected a file ({_supported_types()})")
    if not path.is_file():
        raise DataError(path, f"is not a regular file (a device, socket or pipe?); expected a file ({_supported_types()})")
    kind = file_type(path)
    if kind in JSONL_TYPES:
        return read_jsonl(path)
    if kind in PARQUET_TYPES:
        return read_parquet(path)
    if kind in CSV_TYPES:
        return read_csv(path)
    raise DataError(path, f"unsupported file type {kind!r}; use {_supported_types()}")


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
