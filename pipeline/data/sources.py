"""User data sources for the data assets: where rows come from and how a dataset format becomes records.

A source is a local file (JSONL, Parquet or CSV, JSONL and CSV also gzip-compressed as `.jsonl.gz`,
`.json.gz`, `.csv.gz`: read by `pipeline.data.records`), a directory written by `datasets`'
`save_to_disk`, or a hub dataset named `hub:<owner>/<name>` (the prefix keeps a
mistyped local path from turning into a download). `fields` renames source columns to the names
the format reads, so a dataset with other column names needs no conversion script.

Formats (`format`) and the data kinds they produce:

| format | sft | preference | prompts |
|---|---|---|---|
| `records` | `prompt`, `completion` (optional `messages`) | `prompt`, `chosen`, `rejected` | `prompt` |
| `hh_rlhf` | final turn of `chosen` | `chosen`/`rejected` dialogues split into shared prompt + final answers | context of `chosen` |
| `ultrafeedback` | final turn of the `chosen` conversation | `chosen`/`rejected` message lists | `prompt` |
| `tldr` | `post` -> `summary` | `info.post` + `summaries`[`choice`] | `post` |
| `messages` | final assistant turn of `messages` | - | context of `messages` |

Every record is checked here (row numbers count data rows from 1 as they come out of the source)
and once more by `records.validate_records`, so a bad row fails with an error naming the source,
the row and the field, or, with `on_bad_row: skip`, is left out and counted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any

from pipeline.data.conversations import check_messages, split_final_answer, transcript_prompt
from pipeline.data.records import REQUIRED_FIELDS, DataError, read_records, validate_records
from pipeline.settings import SourceSettings

logger = logging.getLogger(__name__)

HUB_PREFIX = "hub:"
HUB_ID_SHAPE = re.compile(r"[\w.-]+/[\w-]+")  # owner/name without a file suffix
TLDR_INSTRUCTION = "Summarize this Reddit post in a sentence or two."
HH_TURN_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class LoadedSource:
    records: list[dict[str, Any]]
    description: str
    n_rows_read: int
    skipped: list[str] = dataclass_field(default_factory=list)  # one error message per skipped row


@dataclass(frozen=True)
class SourceRow:
    """One raw row and where it came from, so every check can name source, row and field."""

    values: dict[str, Any]
    source: str
    row: int

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(self.source, message, row=self.row, field=field)

    def value(self, field: str) -> Any:
        if field not in self.values:
            columns = ", ".join(sorted(self.values)) or "none"
            raise self.error(f"missing column (columns present: {columns}; map one with `fields`)", field)
        return self.values[field]

    def text(self, field: str, within: dict[str, Any] | None = None) -> str:
        """A non-empty string from this row (or from a nested object of it, named by `field`)."""
        if within is None:
            value = self.value(field)
        elif field.rsplit(".", 1)[-1] in within:
            value = within[field.rsplit(".", 1)[-1]]
        else:
            raise self.error("missing field", field)
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {type(value).__name__}", field)
        if not value.strip():
            raise self.error("empty string", field)
        return value

    def messages(self, field: str) -> list[dict[str, str]]:
        return check_messages(self.value(field), self.source, self.row, field)


# ---------------------------------------------------------------- reading rows


def read_source_rows(settings: SourceSettings) -> tuple[list[dict[str, Any]], str]:
    """The raw rows of a source and a one-line description of it (for metadata and logs)."""
    source = settings.source
    if not source:
        raise ValueError("no source given")
    if source.startswith(HUB_PREFIX):
        rows = read_hub_dataset(source[len(HUB_PREFIX):], settings)
        where = f"{source} split {settings.split or 'train'}"
        if settings.subset:
            where += f" subset {settings.subset}"
        if settings.data_dir:
            where += f" data_dir {settings.data_dir}"
        if settings.dataset_revision:
            where += f"@{settings.dataset_revision}"
    else:
        path = Path(source)
        if not path.exists() and HUB_ID_SHAPE.fullmatch(source):
            raise DataError(source, f"no such file or directory; for a hub dataset write `{HUB_PREFIX}{source}`")
        if path.is_dir():
            rows = read_saved_dataset(path, settings.split, settings.max_records)
            where = f"{source} split {settings.split or 'train'}"
        else:  # a file: JSONL, Parquet or CSV, plain or compressed (records.FILE_TYPES)
            rows = read_records(path)
            where = source
    if settings.max_records is not None:
        rows = rows[: settings.max_records]
    return rows, f"{where} ({settings.format})"


def _choose_split(dataset, split: str | None, where: str):
    from datasets import DatasetDict

    if not isinstance(dataset, DatasetDict):
        return dataset
    name = split or "train"
    if name not in dataset:
        raise DataError(where, f"has no split {name!r}; splits: {', '.join(dataset)}")
    return dataset[name]


def read_saved_dataset(path: Path, split: str | None, max_records: int | None) -> list[dict[str, Any]]:
    """A `Dataset` or `DatasetDict` written by `save_to_disk`."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise DataError(path, f"is a directory but not one written by datasets' save_to_disk ({error})") from None
    return _dataset_rows(_choose_split(dataset, split, str(path)), max_records)


def _dataset_rows(dataset, max_records: int | None) -> list[dict[str, Any]]:
    """The first `max_records` rows (all without a limit), selected before converting the rest."""
    if max_records is not None:
        dataset = dataset.select(range(min(max_records, len(dataset))))
    return dataset.to_list()


def read_hub_dataset(hub_id: str, settings: SourceSettings) -> list[dict[str, Any]]:
    """A dataset from the Hugging Face hub (or its local cache), one split."""
    import datasets

    where = f"{HUB_PREFIX}{hub_id}"
    if not hub_id or hub_id.startswith(("/", ".")):
        raise DataError(where, "expected `hub:<owner>/<name>`")
    logger.info(f"loading {where} split {settings.split or 'train'} from the hub")
    try:
        dataset = datasets.load_dataset(
            hub_id,
            name=settings.subset,
            data_dir=settings.data_dir,
            split=settings.split or "train",
            revision=settings.dataset_revision,
        )
    except Exception as error:  # network, auth, unknown split: all mean the source cannot be read
        raise DataError(where, f"could not load from the hub ({type(error).__name__}: {error})") from None
    return _dataset_rows(dataset, settings.max_records)  # a split was named: one Dataset, not a DatasetDict


def apply_field_map(values: dict[str, Any], fields: dict[str, str], source: str, row: int) -> dict[str, Any]:
    """The row with each mapped source column also available under the format's field name."""
    if not fields:
        return values
    mapped = dict(values)
    for format_field, column in fields.items():
        if column not in values:
            columns = ", ".join(sorted(values)) or "none"
            raise DataError(source, f"missing column {column!r} (mapped to {format_field!r}; columns present: {columns})", row=row, field=column)
        mapped[format_field] = values[column]
    return mapped


# ---------------------------------------------------------------- format adapters


def _preference(row: SourceRow, prompt: str, chosen: str, rejected: str) -> dict[str, str]:
    if chosen.strip() == rejected.strip():
        raise row.error("chosen and rejected answers are identical", "rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _shared_context(row: SourceRow, chosen: list[dict[str, str]], rejected: list[dict[str, str]]):
    """Chosen and rejected must continue the same conversation; returns (context, chosen, rejected) answers."""
    context, chosen_answer = split_final_answer(chosen)
    rejected_context, rejected_answer = split_final_answer(rejected)
    if [(m["role"], m["content"].strip()) for m in context] != [(m["role"], m["content"].strip()) for m in rejected_context]:
        turn = next(
            (i for i, (a, b) in enumerate(zip(context, rejected_context), start=1) if a != b),
            min(len(context), len(rejected_context)) + 1,
        )
        raise row.error(f"chosen and rejected dialogues differ before their final answers (at turn {turn})", "rejected")
    return context, chosen_answer, rejected_answer


def parse_hh_dialogue(row: SourceRow, field: str) -> list[dict[str, str]]:
    """"\\n\\nHuman: ...\\n\\nAssistant: ..." as a checked message list."""
    text = row.text(field)
    parts = HH_TURN_MARKER.split(text)
    if len(parts) < 3:
        raise row.error("no 'Human:' / 'Assistant:' turns found", field)
    if parts[0].strip():
        raise row.error(f"text before the first turn marker: {parts[0].strip()[:60]!r}", field)
    turns = [{"role": HH_ROLES[speaker], "content": content.strip()} for speaker, content in zip(parts[1::2], parts[2::2])]
    return check_messages(turns, row.source, row.row, field)


def hh_preference(row: SourceRow) -> dict[str, str]:
    context, chosen, rejected = _shared_context(row, parse_hh_dialogue(row, "chosen"), parse_hh_dialogue(row, "rejected"))
    return _preference(row, transcript_prompt(context), chosen, rejected)


def _conversation_sft(messages: list[dict[str, str]]) -> dict[str, Any]:
    context, answer = split_final_answer(messages)
    return {"prompt": transcript_prompt(context), "completion": answer, "messages": messages}


def _conversation_prompt(messages: list[dict[str, str]]) -> dict[str, str]:
    return {"prompt": transcript_prompt(split_final_answer(messages)[0])}


def ultrafeedback_preference(row: SourceRow) -> dict[str, str]:
    context, chosen, rejected = _shared_context(row, row.messages("chosen"), row.messages("rejected"))
    return _preference(row, transcript_prompt(context), chosen, rejected)


def tldr_prompt(row: SourceRow, post_fields: dict[str, Any] | None = None, prefix: str = "") -> str:
    """The post as a summarization request; subreddit and title are included when present."""
    fields = row.values if post_fields is None else post_fields
    lines = [TLDR_INSTRUCTION, ""]
    for name, label in (("subreddit", "SUBREDDIT: r/"), ("title", "TITLE: ")):
        if fields.get(name) is not None:
            lines.append(label + row.text(prefix + name, within=fields).strip())
    lines.append("POST: " + row.text(prefix + "post", within=fields).strip())
    return "\n".join(lines)


def _tldr_post_fields(row: SourceRow) -> tuple[dict[str, Any] | None, str]:
    """Comparison rows nest the post under `info`; flattened copies have it at the top level."""
    if "info" not in row.values:
        return None, ""
    info = row.values["info"]
    if not isinstance(info, dict):
        raise row.error(f"expected an object with post, title and subreddit, got {type(info).__name__}", "info")
    return info, "info."


def tldr_sft(row: SourceRow) -> dict[str, str]:
    return {"prompt": tldr_prompt(row), "completion": row.text("summary").strip()}


def tldr_preference(row: SourceRow) -> dict[str, str]:
    summaries = row.value("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise row.error("expected a list of two summaries", "summaries")
    texts = []
    for i, summary in enumerate(summaries):
        if not isinstance(summary, dict):
            raise row.error(f"summary {i} is a {type(summary).__name__}, expected an object with `text`", "summaries")
        texts.append(row.text(f"summaries[{i}].text", within=summary).strip())
    choice = row.value("choice")
    if isinstance(choice, bool) or choice not in (0, 1):
        raise row.error(f"expected 0 or 1, got {choice!r}", "choice")
    post_fields, prefix = _tldr_post_fields(row)
    return _preference(row, tldr_prompt(row, post_fields, prefix), texts[choice], texts[1 - choice])


def tldr_prompt_record(row: SourceRow) -> dict[str, str]:
    post_fields, prefix = _tldr_post_fields(row)
    return {"prompt": tldr_prompt(row, post_fields, prefix)}


def plain_records(kind: str) -> Callable[[SourceRow], dict[str, Any]]:
    """Rows that already carry the kind's fields (after `fields` mapping); other columns are kept."""

    def adapt(row: SourceRow) -> dict[str, Any]:
        record = dict(row.values)
        for name in REQUIRED_FIELDS[kind]:
            row.text(name)
        if kind == "preference":
            _preference(row, record["prompt"], record["chosen"], record["rejected"])
        if kind == "sft" and "messages" in record:
            record["messages"] = row.messages("messages")
        return record

    return adapt


ADAPTERS: dict[tuple[str, str], Callable[[SourceRow], dict[str, Any]]] = {
    **{("records", kind): plain_records(kind) for kind in REQUIRED_FIELDS},
    ("hh_rlhf", "preference"): hh_preference,
    ("hh_rlhf", "sft"): lambda row: _conversation_sft(parse_hh_dialogue(row, "chosen")),
    ("hh_rlhf", "prompts"): lambda row: _conversation_prompt(parse_hh_dialogue(row, "chosen")),
    ("ultrafeedback", "preference"): ultrafeedback_preference,
    ("ultrafeedback", "sft"): lambda row: _conversation_sft(row.messages("chosen")),
    ("ultrafeedback", "prompts"): lambda row: {"prompt": row.text("prompt")},
    ("tldr", "sft"): tldr_sft,
    ("tldr", "preference"): tldr_preference,
    ("tldr", "prompts"): tldr_prompt_record,
    ("messages", "sft"): lambda row: _conversation_sft(row.messages("messages")),
    ("messages", "prompts"): lambda row: _conversation_prompt(row.messages("messages")),
}


def adapt_rows(
    rows: list[dict[str, Any]], data_format: str, kind: str, source: str,
    fields: dict[str, str] | None = None, on_bad_row: str = "error",
) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of `kind` from raw rows in `data_format`; returns (records, messages of skipped rows)."""
    adapter = ADAPTERS.get((data_format, kind))
    if adapter is None:
        supported = ", ".join(f for f, k in ADAPTERS if k == kind)
        raise ValueError(f"format {data_format!r} cannot produce {kind} data; formats that can: {supported}")
    records, skipped = [], []
    for row_number, values in enumerate(rows, start=1):
        try:
            if not isinstance(values, dict):
                raise DataError(source, f"expected an object, got {type(values).__name__}", row=row_number)
            row = SourceRow(apply_field_map(values, fields or {}, source, row_number), source, row_number)
            records.append(adapter(row))
        except DataError as error:
            if on_bad_row != "skip":
                raise
            skipped.append(str(error))
    if skipped:
        logger.warning(f"{source}: skipped {len(skipped)} of {len(rows)} rows; first: {skipped[0]}")
    return records, skipped


def load_source(settings: SourceSettings, kind: str) -> LoadedSource:
    """Read, adapt and check a configured source into records of `kind` (sft, preference or prompts)."""
    if (settings.format, kind) not in ADAPTERS:  # fail before a long download
        adapt_rows([], settings.format, kind, settings.source or "")
    rows, description = read_source_rows(settings)
    records, skipped = adapt_rows(rows, settings.format, kind, settings.source, settings.fields, settings.on_bad_row)
    validate_records(records, kind, settings.source)
    return LoadedSource(records=records, description=description, n_rows_read=len(rows), skipped=skipped)
