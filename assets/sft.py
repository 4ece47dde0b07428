"""The SFT policy: TRL `SFTTrainer` on the instruction data, loss on answer tokens only."""


import json
from pathlib import Path

import dagster as dg

from assets.data import load_data
from pipeline.markdown import markdown_table
from pipeline.model_card import write_model_card
from pipeline.resources import ArtifactStoreResource, artifact_output
from pipeline.sft import SftSettings

SFT_EVAL_FILE = "sft_eval.json"


class SftConfig(dg.Config, SftSettings):
    pass


@dg.asset(group_name="models", code_version="1", pool="gpu", kinds={"pytorch"})
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    config: SftConfig,
    base_model: Path,
    sft_data: Path,
    artifacts: ArtifactStoreResource,
) -> dg.Output:
    """SFT policy (HF directory) with `sft_eval.json`: train and held-out loss, format adherence, samples."""
    from pipeline.sft import train_sft

    records = load_data(sft_data)
    context.log.info(f"SFT on {len(records)} records from {sft_data}")
    with artifacts.store().stage("sft_checkpoint") as staged:
        metrics = train_sft(base_model, records, staged.path, config)
        (staged.path / SFT_EVAL_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_model_card(staged.path)
    return artifact_output(staged.path, {
        "train_loss": metrics["train_loss"],
        "held_out_loss_before": metrics["held_out_loss_before"],
        "held_out_loss": metrics["held_out_loss"],
        "format_adherence": metrics["format_adherence"],
        "n_train": metrics["n_train"],
        "n_held_out": metrics["n_held_out"],
        "samples": dg.MetadataValue.md(markdown_table(metrics["samples"], max_chars=200)),
    })
