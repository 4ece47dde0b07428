"""The SFT policy: TRL `SFTTrainer` on the instruction data, loss on answer tokens only."""


import json
from pathlib import Path

import dagster as dg

from pipeline.data.records import load_data
from pipeline.evaluation.markdown import markdown_table
from pipeline.orchestration.execution import gpu_op_tags
from pipeline.orchestration.incremental import reuse_if_unchanged
from pipeline.orchestration.launchers import PIPES_CLIENT_KEY, launcher_label, train_with_launcher
from pipeline.orchestration.model_card import write_model_card
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.resources import PIPES_SUBPROCESS_CLIENT, ArtifactStoreResource
from pipeline.settings import LaunchSettings, SftSettings, settings_from
from pipeline.storage.contract import SFT_CURVES_FILE, SFT_EVAL_FILE
from quality_gates.refusal import refuse_if_input_gates_failed


class SftConfig(dg.Config, SftSettings, LaunchSettings):
    pass


@dg.asset(group_name="models", code_version="1", pool="gpu", op_tags=gpu_op_tags(), kinds={"pytorch"},
          resource_defs={PIPES_CLIENT_KEY: PIPES_SUBPROCESS_CLIENT})
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    config: SftConfig,
    base_model: Path,
    sft_data: Path,
    artifacts: ArtifactStoreResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.Output:
    """SFT policy (HF directory) with `sft_eval.json`: train and held-out loss, format adherence, samples."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    from pipeline.storage.checkpoints import checkpoint_key, training_scratch
    from pipeline.training.sft import plot_loss_curves, train_sft

    refuse_if_input_gates_failed(context)
    settings, launch = settings_from(config, SftSettings), settings_from(config, LaunchSettings)
    records = load_data(sft_data)
    context.log.info(f"SFT on {len(records)} records from {sft_data}")
    store = artifacts.store()
    key = checkpoint_key([settings, launch], {"base_model": base_model, "sft_data": sft_data})
    # Checkpoints outlive a killed run (the next run with this key resumes) and go once the artifact is committed.
    with training_scratch(store, "sft_checkpoint", key) as checkpoints, store.stage("sft_checkpoint") as staged:
        if checkpoints.resume_from is not None:
            context.log.info(f"resuming SFT from {checkpoints.resume_from} (a previous run was interrupted)")
        metrics = train_with_launcher(  # in this step, or on N GPUs (DDP / DeepSpeed / FSDP) through Dagster Pipes
            context, pipes_subprocess_client, "sft_checkpoint", launch,
            lambda: train_sft(base_model, records, staged.path, settings, checkpoints),
            {"base_model": base_model, "checkpoints": checkpoints}, records, staged.path, settings,
        )
        (staged.path / SFT_EVAL_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        has_curves = plot_loss_curves(metrics, staged.path / SFT_CURVES_FILE)
        write_model_card(context, staged.path)
    output = artifact_output(context, staged.path, {
        "train_loss": metrics["train_loss"],
        "held_out_loss_before": metrics["held_out_loss_before"],
        "held_out_loss": metrics["held_out_loss"],
        "format_adherence": metrics["format_adherence"],
        "n_train": metrics["n_train"],
        "n_held_out": metrics["n_held_out"],
        "total_steps": metrics["total_steps"],
        "resumed_from_step": metrics["resumed_from_step"],
        "launcher": launcher_label(launch),
        "samples": dg.MetadataValue.md(markdown_table(metrics["samples"], max_chars=200)),
        **({"loss_curves": dg.MetadataValue.path(str(staged.path / SFT_CURVES_FILE))} if has_curves else {}),
    })
    return record_in_dvc(context, output)
