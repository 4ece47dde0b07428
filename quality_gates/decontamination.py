"""Cleaning instead of blocking: a training data asset removes the rows its eval_leak and dedup gates flag.

With `drop_eval_leaks` / `drop_duplicates` set, sft_data, preference_data and ppo_prompts find the rows
to drop with the gates' own entry points (`quality_gates.leak.flag_eval_leaks`,
`quality_gates.dedup.flag_duplicates`), keep the others as their data and write the removed ones, each
with its reason and what it matched, to `dropped.jsonl` beside it. The gates then run on the kept rows
and pass at the settings the rows were dropped with (the assets use the gates' defaults; a gate given
other thresholds in its check config can still flag rows).

Order: eval leaks first, then duplicates among the rows left, so no row is dropped as the copy of a
row that was itself dropped as a leak (its copy is then the one that stays, unless it leaks too).
Of a set of duplicates the first stays, as the dedup gate counts the later ones as the duplicates.
Rows are numbered from 1 in the order the asset read them (for a JSONL source with no skipped rows:
its line numbers), before anything was dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quality_gates.dedup import DedupSettings, flag_duplicates
from quality_gates.leak import LeakSettings, flag_eval_leaks
from quality_gates.text import TRAINING_TEXT_FIELDS

EVAL_LEAK = "eval_leak"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
REASONS = (EVAL_LEAK, EXACT_DUPLICATE, NEAR_DUPLICATE)


@dataclass
class Decontaminated:
    """The rows kept and the rows dropped (each: row, reason, what it matched, the record)."""

    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_read(self) -> int:
        return len(self.kept) + len(self.dropped)

    def counts(self) -> dict[str, int]:
        """Rows dropped by reason (every reason, zeros included)."""
        by_reason = Counter(entry["reason"] for entry in self.dropped)
        return {reason: by_reason.get(reason, 0) for reason in REASONS}


def drop_flagged_rows(
    records: Sequence[dict[str, Any]],
    asset_name: str,
    eval_prompts: Sequence[str] | None = None,
    drop_duplicates: bool = False,
    leak_settings: LeakSettings | None = None,
    dedup_settings: DedupSettings | None = None,
) -> Decontaminated:
    """`records` without the rows the eval_leak gate (when `eval_prompts` is given) and the dedup gate
    (when `drop_duplicates`) flag on them."""
    candidates = TRAINING_TEXT_FIELDS[asset_name]
    rows = list(range(1, len(records) + 1))  # the row number of each remaining record
    remaining = list(records)
    dropped: list[dict[str, Any]] = []

    if eval_prompts is not None:
        leaks = flag_eval_leaks(remaining, candidates, eval_prompts, leak_settings or LeakSettings())
        for leak in leaks:
            dropped.append({
                "row": rows[leak["row"] - 1], "reason": EVAL_LEAK, "match": leak["match"], "field": leak["field"],
                "eval_prompt": leak["eval_prompt"], "shared_words": leak["shared_words"],
                "record": remaining[leak["row"] - 1],
            })
        rows, remaining = _without(rows, remaining, {leak["row"] for leak in leaks})

    if drop_duplicates and remaining:
        report = flag_duplicates(remaining, candidates, dedup_settings or DedupSettings())
        flagged: set[int] = set()
        for duplicate in report.exact:
            flagged.add(duplicate["row"])
            original = duplicate["duplicate_of_row"]
            dropped.append({
                "row": rows[duplicate["row"] - 1], "reason": EXACT_DUPLICATE, "duplicate_of_row": rows[original - 1],
                "duplicate_of": remaining[original - 1], "record": remaining[duplicate["row"] - 1],
            })
        for pair in report.near:  # pairs come sorted: a row near several earlier ones is named with the first
            if pair["row"] in flagged:
                continue
            flagged.add(pair["row"])
            original = pair["similar_to_row"]
            dropped.append({
                "row": rows[pair["row"] - 1], "reason": NEAR_DUPLICATE, "duplicate_of_row": rows[original - 1],
                "similarity": pair["similarity"], "duplicate_of": remaining[original - 1],
                "record": remaining[pair["row"] - 1],
            })
        rows, remaining = _without(rows, remaining, flagged)

    dropped.sort(key=lambda entry: entry["row"])
    return Decontaminated(kept=remaining, dropped=dropped)


def _without(rows: list[int], records: list[dict[str, Any]], positions: set[int]):
    """The row numbers and records except those at the given 1-based positions."""
    keep = [i for i in range(len(records)) if i + 1 not in positions]
    return [rows[i] for i in keep], [records[i] for i in keep]
