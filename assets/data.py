"""Data assets: SFT pairs, preference pairs, PPO prompts and held-out evaluation prompts.

Each comes from the seeded generator by default, or from a user source (`source`: JSONL, Parquet or CSV
file, plain or gzip-compressed, a saved `datasets` directory or `hub:<id>`) read in a dataset `format`:
see pipeline/data/sources.py.

The three training data assets depend on `eval_prompts`: with `drop_eval_leaks` they read it and remove
the rows the eval_leak gate would flag, with `drop_duplicates` the rows the dedup gate would flag
(`quality_gates.decontamination`, the gates' own functions), keeping the removed rows in
`dropped.jsonl`. By default they do not read it, and the gates block on such rows.
"""


import json
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from pipeline.data import generator
from pipeline.data.sources import load_source
from pipeline.evaluation.markdown import markdown_table
from pipeline.data.records import load_data, write_jsonl
from pipeline.orchestration.incremental import reuse_if_unchanged
from pipeline.orchestration.materializations import latest_artifact
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.resources import ArtifactStoreResource
from pipeline.settings import SourceSettings, settings_from
from pipeline.storage.contract import DATA_FILE, DROPPED_BY_REASON_KEY, DROPPED_FILE, N_DROPPED_KEY, STATS_FILE
from quality_gates.decontamination import Decontaminated, drop_flagged_rows


class DataSourceConfig(dg.Config, SourceSettings):
    n_records: int = Field(400, gt=0, description="how many records the generator makes")
    seed: int = Field(0, description="generator seed")
    explanation_fraction: float = Field(
        0.5, ge=0, le=1, description="share of explanation prompts; the rest are verifiable tasks"
    )


class TrainingDataConfig(DataSourceConfig):
    drop_eval_leaks: bool = Field(
        False, description="remove the rows the eval_leak gate would flag (they contain an eval_prompts prompt) "
        "instead of letting the gate block; they are kept in dropped.jsonl beside the data"
    )
    drop_duplicates: bool = Field(
        False, description="remove the rows the dedup gate would flag (exact and near duplicates of an earlier row) "
        "instead of letting the gate block; they are kept in dropped.jsonl beside the data"
    )


class SftDataConfig(TrainingDataConfig):
    n_records: int = Field(
        2000, gt=0, description="demonstrations; the generator's explanation prompts run out at 480 (40 concepts x 12 "
        "templates), the rest are tasks: the small SFT model learns the tasks from them (README: Does RLHF work on the "
        "default job?)"
    )
    flawed_fraction: float = Field(
        0.5, ge=0, le=1, description="share of generated demonstrations that fall short, as real demonstrations vary: "
        "SFT imitates them all, the reward model learns from comparisons which answers are better, and PPO moves the "
        "policy towards those"
    )
    task_flaws: list[str] = Field(
        list(generator.DEFAULT_DEMONSTRATION_FLAWS["verifiable"]), description="how flawed task demonstrations fall short, cycled (a flaw named twice is twice as "
        "common): wrong (a wrong result), padded, vague, repetitive (the working repeated, no final answer)"
    )
    explanation_flaws: list[str] = Field(
        list(generator.DEFAULT_DEMONSTRATION_FLAWS["explanation"]), description="how flawed explanation demonstrations fall short, cycled: padded, vague, repetitive"
    )


class PreferenceDataConfig(TrainingDataConfig):
    n_records: int = Field(
        2000, gt=0, description="comparisons are cheap to learn from (the reward model trains in seconds), and telling a "
        "right task answer from a wrong one takes many of them (README: Does RLHF work on the default job?)"
    )
    explanation_fraction: float = Field(
        0.2, ge=0, le=1, description="share of explanation prompts; the rest are verifiable tasks, whose pairs are the "
        "hard ones to learn"
    )


class PpoPromptsConfig(TrainingDataConfig):
    n_records: int = Field(
        512, gt=0, description="PPO's prompts (the last `n_eval_prompts` held out for its own evaluation): enough that "
        "the default's 1024 episodes visit each about twice rather than nine times"
    )


class EvalPromptsConfig(DataSourceConfig):
    n_records: int = Field(
        128, gt=0, description="held-out prompts, half of them tasks: with 32 tasks (4 samples each) a gain of PPO "
        "over SFT had an interval about +-0.12 wide; 64 narrow it to about +-0.085 for ~8 s more on 2 CPU cores"
    )


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


def _decontaminate(
    context: dg.AssetExecutionContext, config: TrainingDataConfig, records: list[dict[str, Any]]
) -> Decontaminated | None:
    """The records without what the eval_leak / dedup gates would flag, as configured; None: nothing asked."""
    if not (config.drop_eval_leaks or config.drop_duplicates):
        return None
    asset_name = context.asset_key.to_user_string()
    eval_prompts = None
    if config.drop_eval_leaks:
        eval_dir = latest_artifact(context.instance, "eval_prompts")
        eval_prompts = [record["prompt"] for record in load_data(eval_dir)]
    cleaned = drop_flagged_rows(records, asset_name, eval_prompts, config.drop_duplicates)
    counts = ", ".join(f"{reason}: {n}" for reason, n in cleaned.counts().items())
    context.log.info(f"{asset_name}: dropped {len(cleaned.dropped)} of {cleaned.n_read} rows ({counts}); kept {len(cleaned.kept)}")
    if not cleaned.kept:
        raise dg.Failure(f"{asset_name}: all {cleaned.n_read} rows were dropped ({counts}); nothing is left to train on")
    return cleaned


def _dropped_metadata(cleaned: Decontaminated, artifact_dir: Path) -> dict[str, Any]:
    preview = [
        {"row": entry["row"], "reason": entry["reason"], "prompt": entry["record"].get("prompt"),
         "matches": entry["eval_prompt"] if "eval_prompt" in entry else f"row {entry['duplicate_of_row']}"}
        for entry in cleaned.dropped[:10]
    ]
    metadata: dict[str, Any] = {
        N_DROPPED_KEY: len(cleaned.dropped),
        DROPPED_BY_REASON_KEY: dg.MetadataValue.json({"rows_read": cleaned.n_read, **cleaned.counts(), "kept": len(cleaned.kept)}),
        "dropped_file": dg.MetadataValue.path(str(artifact_dir / DROPPED_FILE)),
    }
    if preview:
        metadata["dropped_rows"] = dg.MetadataValue.md(markdown_table(preview, columns=("row", "reason", "prompt", "matches"), max_chars=100))
    return metadata


def _materialize_data(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    records: list[dict[str, Any]],
    text_fields: tuple[str, ...],
    source: str | None,
    config: TrainingDataConfig | None = None,
) -> dg.Output:
    from quality_gates.schemas import validate_data  # pandas + pandera: imported only by the steps that validate

    asset_name = context.asset_key.to_user_string()
    validate_data(records, asset_name, source or "generator")  # pandera: stops on a bad row, naming it
    cleaned = _decontaminate(context, config, records) if config is not None else None
    if cleaned is not None:
        records = cleaned.kept
    stats = _stats(records, text_fields)
    stats["source"] = source or "generator"
    if cleaned is not None:
        stats["dropped"] = {"rows_read": cleaned.n_read, **cleaned.counts()}
    with artifacts.store().stage(asset_name) as staged:
        write_jsonl(records, staged.path / DATA_FILE)
        if cleaned is not None:
            write_jsonl(cleaned.dropped, staged.path / DROPPED_FILE)
        (staged.path / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    context.log.info(f"{asset_name}: {len(records)} records from {stats['source']} -> {staged.path}")
    metadata = {
        "n_records": len(records),
        "source": stats["source"],
        "stats": dg.MetadataValue.json(stats),
        "preview": dg.MetadataValue.md(markdown_table(records[:5], columns=text_fields, max_chars=100)),
    }
    if cleaned is not None:
        metadata.update(_dropped_metadata(cleaned, staged.path))
    output = artifact_output(context, staged.path, metadata)
    return record_in_dvc(context, output)


@dg.asset(group_name="data", code_version="1", kinds={"jsonl"}, deps=["eval_prompts"])
def sft_data(context: dg.AssetExecutionContext, config: SftDataConfig, artifacts: ArtifactStoreResource) -> dg.Output:
    """Instruction/answer pairs (prompt, completion) for supervised fine-tuning."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    if config.source:
        records, source = _user_records(context, config, "sft")
    else:
        records, source = generator.sft_records(
            config.n_records, config.seed, config.explanation_fraction, config.flawed_fraction,
            {"verifiable": config.task_flaws, "explanation": config.explanation_flaws},
        ), None
    return _materialize_data(context, artifacts, records, ("prompt", "completion"), source, config)


@dg.asset(group_name="data", code_version="3", kinds={"jsonl"}, deps=["eval_prompts"])
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
    return _materialize_data(context, artifacts, records, ("prompt", "chosen", "rejected"), source, config)


@dg.asset(group_name="data", code_version="1", kinds={"jsonl"}, deps=["eval_prompts"])
def ppo_prompts(context: dg.AssetExecutionContext, config: PpoPromptsConfig, artifacts: ArtifactStoreResource) -> dg.Output:
    """Prompts the policy answers during PPO rollouts."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    if config.source:
        records, source = _user_records(context, config, "prompts")
    else:
        records, source = generator.prompt_records(config.n_records, config.seed, "ppo", config.explanation_fraction), None
    return _materialize_data(context, artifacts, records, ("prompt",), source, config)


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
