"""Data assets: SFT pairs, preference pairs, PPO prompts and held-out evaluation prompts.

Each comes from the seeded generator by default, or from a user source (`source`: JSONL, Parquet or CSV
file, plain or gzip-compressed, a saved `datasets` directory or `hub:<id>`) read in a dataset `format`:
see pipeline/data/sources.py.
"""


import json
from collections import Counter
from typing import Any

import dagster as dg
from pydantic import Field

from pipeline.data import generator
from pipeline.data.records import write_jsonl
from pipeline.data.sources import load_source
from pipeline.evaluation.markdown import markdown_table
from pipeline.orchestration.incremental import reuse_if_unchanged
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.resources import ArtifactStoreResource
from pipeline.settings import SourceSettings, settings_from
from pipeline.storage.contract import DATA_FILE, STATS_FILE


class DataSourceConfig(dg.Config, SourceSettings):
    n_records: int = Field(400, gt=0, description="how many records the generator makes")
    seed: int = Field(0, description="generator seed")
    explanation_fraction: float = Field(
        0.5, ge=0, le=1, description="share of explanation prompts; the rest are verifiable tasks"
    )


class SftDataConfig(DataSourceConfig):
    n_records: int = Field(1200, gt=0)
    flawed_fraction: float = Field(
        0.4, ge=0, le=1, description="share of generated demonstrations that fall short (a wrong final answer, "
        "padding, vagueness, repetition), as real demonstrations vary: SFT imitates them all, the reward model "
        "learns from comparisons which answers are better, and PPO moves the policy towards those"
    )


class PreferenceDataConfig(DataSourceConfig):
    n_records: int = Field(400, gt=0)


class PpoPromptsConfig(DataSourceConfig):
    n_records: int = Field(128, gt=0)


class EvalPromptsConfig(DataSourceConfig):
    n_records: int = Field(64, gt=0)


def _length_stats(records: list[dict[str, Any]], field: str) -> dict[str, float]:
    lengths = sorted(len(r[field]) for r in records)
    return {f"{field}_chars_mean": sum(lengths) / len(lengths), f"{field}_chars_max": lengths[-1]}


def _stats(records: list[dict[str, Any]], text_fields: tuple[str, ...]) -> dict[str, Any]:
    stats: dict[str, Any] = {"n_records": len(records)}
    for field in text_fields:
        stats.update(_length_stats(records, field))
    kinds = Counter(r.get("kind") or "user" for r in records)
    stats["kinds"] = dict(sorted(kinds.items()))
    if any(r.get("flaw") is not None for r in records):
        flaws = Counter(r.get("flaw") or "none" for r in records)
        stats["demonstration_flaws"] = dict(sorted(flaws.items()))
    if "chosen" in text_fields:
        modes = Counter(r.get("failure_mode") or "unknown" for r in records)
        stats["failure_modes"] = dict(sorted(modes.items()))
        stats["fraction_chosen_longer"] = sum(len(r["chosen"]) > len(r["rejected"]) for r in records) / len(records)
    return stats


def _user_records(context: dg.AssetExecutionContext, config: DataSourceConfig, kind: str) -> tuple[list[dict[str, Any]], str]:
    """Records from the configured source, and a label saying where they came from and what was skipped."""
    loaded = load_source(settings_from(config, SourceSettings), kind)
    label = loaded.description
    if loaded.skipped:
        label += f"; {len(loaded.skipped)} of {loaded.n_rows_read} rows skipped as bad"
        context.log.warning(f"{label}; first: " + " | ".join(loaded.skipped[:5]))
    return loaded.records, label


def _materialize_data(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    records: list[dict[str, Any]],
    text_fields: tuple[str, ...],
    source: str | None,
) -> dg.Output:
    from quality_gates.schemas import validate_data  # pandas + pandera: imported only by the steps that validate

    asset_name = context.asset_key.to_user_string()
    validate_data(records, asset_name, source or "generator")  # pandera: stops on a bad row, naming it
    stats = _stats(records, text_fields)
    stats["source"] = source or "generator"
    with artifacts.store().stage(asset_name) as staged:
        write_jsonl(records, staged.path / DATA_FILE)
        (staged.path / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    context.log.info(f"{asset_name}: {len(records)} records from {stats['source']} -> {staged.path}")
    output = artifact_output(context, staged.path, {
        "n_records": len(records),
        "source": stats["source"],
        "stats": dg.MetadataValue.json(stats),
        "preview": dg.MetadataValue.md(markdown_table(records[:5], columns=text_fields, max_chars=100)),
    })
    return record_in_dvc(context, output)


@dg.asset(group_name="data", code_version="1", kinds={"jsonl"})
def sft_data(context: dg.AssetExecutionContext, config: SftDataConfig, artifacts: ArtifactStoreResource) -> dg.Output:
    """Instruction/answer pairs (prompt, completion) for supervised fine-tuning."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    if config.source:
        records, source = _user_records(context, config, "sft")
    else:
        records, source = generator.sft_records(
            config.n_records, config.seed, config.explanation_fraction, config.flawed_fraction,
        ), None
    return _materialize_data(context, artifacts, records, ("prompt", "completion"), source)


@dg.asset(group_name="data", code_version="1", kinds={"jsonl"})
def preference_data(
    context: dg.AssetExecutionContext, config: PreferenceDataConfig, artifacts: ArtifactStoreResource
) -> dg.Output:
    """(prompt, chosen, rejected) pairs for the reward model; rejected answers fail in varied ways."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    if config.source:
        records, source = _user_records(context, config, "preference")
    else:
        records, source = generator.preference_records(config.n_records, config.seed, config.explanation_fraction), None
    return _materialize_data(context, artifacts, records, ("prompt", "chosen", "rejected"), source)


@dg.asset(group_name="data", code_version="1", kinds={"jsonl"})
def ppo_prompts(context: dg.AssetExecutionContext, config: PpoPromptsConfig, artifacts: ArtifactStoreResource) -> dg.Output:
    """Prompts the policy answers during PPO rollouts."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    if config.source:
        records, source = _user_records(context, config, "prompts")
    else:
        records, source = generator.prompt_records(config.n_records, config.seed, "ppo", config.explanation_fraction), None
    return _materialize_data(context, artifacts, records, ("prompt",), source)


@dg.asset(group_name="data", code_version="1", kinds={"jsonl"})
def eval_prompts(context: dg.AssetExecutionContext, config: EvalPromptsConfig, artifacts: ArtifactStoreResource) -> dg.Output:
    """Held-out evaluation prompts, disjoint from every training set."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    if config.source:
        records, source = _user_records(context, config, "prompts")
    else:
        records, source = generator.prompt_records(config.n_records, config.seed, "eval", config.explanation_fraction), None
    return _materialize_data(context, artifacts, records, ("prompt",), source)
