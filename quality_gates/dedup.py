"""Exact and near-duplicate records in a training data set.

Exact duplicates: records whose compared fields are equal after normalisation (case, whitespace,
punctuation; `quality_gates.text.normalise_text`).

Near duplicates: records whose compared fields are *each* similar, by Jaccard similarity of word
bigrams, at or above a threshold. Requiring every field (prompt and answer) to be similar is what
keeps templated tasks apart: "How many times does the letter 'a' appear in the word 'banana'?" and
the same question about 'carrot' have similar prompts (0.69) but different answers, and the
generator's explanation prompts share one answer per concept but are phrased differently. On the
embedded default data the most similar pair of records scores 0.75 (ppo_prompts, prompt only) and
0.69 (sft_data, preference_data), so the default threshold 0.85 passes them with margin while a
record repeated with a few words changed in a long answer, or a long prompt with a word added, fails.

Candidate pairs come from MinHash with locality-sensitive hashing (bands of rows over the tagged
bigram sets), so the cost grows about linearly with the data; every candidate is then verified with
the exact similarity, so a reported pair is never a hashing artefact. A pair whose every field is at
or above the threshold has a tagged-union similarity at or above it too, which is what LSH sees.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from quality_gates.text import normalise_text, word_ngrams

_MERSENNE_PRIME = (1 << 31) - 1


class DedupSettings(BaseModel):
    """Thresholds of the dedup gate; the `dedup` checks' config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    near_duplicate_threshold: float = Field(
        0.85, gt=0, le=1, description="records whose every compared field has word-bigram Jaccard >= this are near duplicates"
    )
    shingle_words: int = Field(2, gt=0, description="words per shingle")
    max_exact_duplicates: int = Field(0, ge=0, description="how many exact duplicates are tolerated")
    max_near_duplicates: int = Field(0, ge=0, description="how many near-duplicate pairs are tolerated")
    minhash_bands: int = Field(20, gt=0, description="LSH bands; more bands find lower similarities as candidates")
    minhash_rows: int = Field(6, gt=0, description="LSH rows per band")
    seed: int = 0


@dataclass
class DuplicateReport:
    fields: tuple[str, ...]
    n_records: int
    exact: list[dict[str, Any]] = field(default_factory=list)
    near: list[dict[str, Any]] = field(default_factory=list)


def compared_fields(records: Sequence[dict[str, Any]], candidates: tuple[str, ...]) -> tuple[str, ...]:
    """The candidate fields that every record has as a string (the first candidate is required)."""
    present = tuple(f for f in candidates if all(isinstance(r.get(f), str) for r in records))
    if not present or present[0] != candidates[0]:
        raise ValueError(f"records lack the field {candidates[0]!r} that deduplication compares")
    return present


def flag_duplicates(
    records: Sequence[dict[str, Any]], candidate_fields: tuple[str, ...], settings: DedupSettings
) -> DuplicateReport:
    """What the dedup gate flags: duplicates on the candidate fields every record has (the one entry point
    of the gate and of the data assets' `drop_duplicates`)."""
    return find_duplicates(records, compared_fields(records, candidate_fields), settings)


def find_duplicates(records: Sequence[dict[str, Any]], fields: Sequence[str], settings: DedupSettings) -> DuplicateReport:
    """Exact and near duplicates among `records`; rows are numbered from 1 as in `data.jsonl`."""
    fields = tuple(fields)
    report = DuplicateReport(fields=fields, n_records=len(records))
    first_row_of: dict[tuple[str, ...], int] = {}
    normalised_unique: dict[int, tuple[str, ...]] = {}
    for index, record in enumerate(records):
        key = tuple(normalise_text(record[f]) for f in fields)
        if key in first_row_of:
            report.exact.append({"row": index + 1, "duplicate_of_row": first_row_of[key] + 1, "prompt": record[fields[0]]})
        else:
            first_row_of[key] = index
            normalised_unique[index] = key

    shingles = {
        i: [word_ngrams(text.split(), settings.shingle_words) for text in key] for i, key in normalised_unique.items()
    }
    for i, j in sorted(_candidate_pairs(shingles, settings)):
        similarity = min(_jaccard(a, b) for a, b in zip(shingles[i], shingles[j]))
        if similarity >= settings.near_duplicate_threshold:
            report.near.append({
                "row": j + 1, "similar_to_row": i + 1, "similarity": round(similarity, 4),
                "prompt": records[j][fields[0]], "other_prompt": records[i][fields[0]],
            })
    return report


def _jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _candidate_pairs(shingles: dict[int, list[set[tuple[str, ...]]]], settings: DedupSettings) -> set[tuple[int, int]]:
    """Pairs (i < j) that share at least one LSH band of their MinHash signatures."""
    n_hashes = settings.minhash_bands * settings.minhash_rows
    rng = np.random.default_rng(settings.seed)
    a = rng.integers(1, _MERSENNE_PRIME, size=n_hashes, dtype=np.uint64)
    b = rng.integers(0, _MERSENNE_PRIME, size=n_hashes, dtype=np.uint64)
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for index, per_field in shingles.items():
        # Tag each shingle with its field so that a prompt bigram never matches an answer bigram.
        tokens = [f"{k}\x1f{' '.join(s)}" for k, sets in enumerate(per_field) for s in sets]
        if not tokens:
            continue
        hashes = np.fromiter((zlib.crc32(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens))
        signature = ((np.outer(a, hashes) + b[:, None]) % _MERSENNE_PRIME).min(axis=1)
        for band in range(settings.minhash_bands):
            rows = signature[band * settings.minhash_rows : (band + 1) * settings.minhash_rows]
            buckets[(band, rows.tobytes())].append(index)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pairs.add((members[x], members[y]))
    return pairs
