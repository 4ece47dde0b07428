"""pandera schemas of the data assets, applied when a data asset is produced (generator or user file).

A record that breaks a schema stops the asset with a `DataError` naming the file, the row (from 1,
as in `data.jsonl` or the user's file) and the field, plus how many other failures there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pandera.pandas as pa

from pipeline.data.records import DataError

# Generous upper bounds: long multi-turn prompts (HH-RLHF) fit; a whole document pasted into one
# field by mistake does not. Longer text would be truncated by every trainer anyway.
MAX_PROMPT_CHARS = 32_000
MAX_ANSWER_CHARS = 32_000


def _text_column(max_chars: int) -> pa.Column:
    return pa.Column(
        object,
        checks=[
            pa.Check(lambda s: s.map(lambda v: isinstance(v, str)), name="is a string"),
            pa.Check(lambda s: s.map(lambda v: not isinstance(v, str) or bool(v.strip())), name="not blank"),
            pa.Check(
                lambda s: s.map(lambda v: not isinstance(v, str) or len(v) <= max_chars),
                name=f"at most {max_chars} characters",
            ),
        ],
        nullable=False,
        coerce=False,
    )


ROW_CHECK_FIELD = {"chosen differs from rejected": "rejected"}


def _chosen_differs_from_rejected(df: pd.DataFrame) -> pd.Series:
    return df["chosen"].map(lambda v: str(v).strip()) != df["rejected"].map(lambda v: str(v).strip())


PROMPT_SCHEMA = pa.DataFrameSchema({"prompt": _text_column(MAX_PROMPT_CHARS)}, strict=False, name="prompts")
SFT_SCHEMA = pa.DataFrameSchema(
    {"prompt": _text_column(MAX_PROMPT_CHARS), "completion": _text_column(MAX_ANSWER_CHARS)}, strict=False, name="sft"
)
PREFERENCE_SCHEMA = pa.DataFrameSchema(
    {
        "prompt": _text_column(MAX_PROMPT_CHARS),
        "chosen": _text_column(MAX_ANSWER_CHARS),
        "rejected": _text_column(MAX_ANSWER_CHARS),
    },
    checks=[pa.Check(_chosen_differs_from_rejected, name="chosen differs from rejected")],
    strict=False,
    name="preference",
)

SCHEMA_BY_ASSET: dict[str, pa.DataFrameSchema] = {
    "sft_data": SFT_SCHEMA,
    "preference_data": PREFERENCE_SCHEMA,
    "ppo_prompts": PROMPT_SCHEMA,
    "eval_prompts": PROMPT_SCHEMA,
}


def records_frame(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """The given columns of the records as object columns (missing fields become None)."""
    return pd.DataFrame({c: pd.Series([r.get(c) for r in records], dtype=object) for c in columns})


def validate_data(records: Sequence[dict[str, Any]], asset_name: str, source: str) -> None:
    """Raise `DataError` naming the first failing row and field when the records break the asset's schema."""
    schema = SCHEMA_BY_ASSET.get(asset_name)
    if schema is None:
        raise ValueError(f"no schema for asset {asset_name!r}; known: {sorted(SCHEMA_BY_ASSET)}")
    if not records:
        raise DataError(source, "contains no records")
    missing = {c for c in schema.columns for r in records if c not in r}
    if missing:
        row = next(i for i, r in enumerate(records, start=1) if any(c not in r for c in missing))
        field = next(c for c in schema.columns if c not in records[row - 1])
        raise DataError(source, "missing field", row=row, field=field)
    frame = records_frame(records, list(schema.columns))
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        failures = errors.failure_cases
        failures = failures[failures["index"].notna()].sort_values("index")
        if failures.empty:
            raise DataError(source, f"breaks the {schema.name} schema: {errors}") from None
        failures = failures.drop_duplicates(subset=["index", "check"])
        first = failures.iloc[0]
        # A whole-row check reports every column of the row; name the field it is about.
        field = ROW_CHECK_FIELD.get(first["check"], first["column"])
        others = len(failures) - 1
        suffix = f" ({others} more failure{'s' if others != 1 else ''} in this file)" if others else ""
        raise DataError(
            source, f"fails the {schema.name} schema check {first['check']!r}{suffix}", row=int(first["index"]) + 1, field=field
        ) from None
