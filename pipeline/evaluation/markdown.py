"""Markdown rendering for Dagster metadata and report files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(value: Any, max_chars: int) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, max_chars: int = 160) -> str:
    """A GitHub-flavoured markdown table of the given columns (default: the first row's keys)."""
    if not rows:
        return "_(no rows)_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, ""), max_chars) for c in columns) + " |")
    return "\n".join(lines)
