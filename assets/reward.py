"""The reward model: TRL `RewardTrainer` (Bradley-Terry) with a scalar head, from the SFT checkpoint."""


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
from pipeline.settings import LaunchSettings, RewardSettings, settings_from
from pipeline.storage.contract import RM_EVAL_FILE
from quality_gates.refusal import refuse_if_input_gates_failed


class RewardModelConfig(dg.Config, RewardSettings, LaunchSettings):
    pass


@dg.asset(group_name="models", code_version="2", pool="gpu", op_tags=gpu_op_tags(), kinds={"pytorch"},
          resource_defs={PIPES_CLIENT_KEY: PIPES_SUBPROCESS_CLIENT})
def reward_model(
    context: dg.AssetExecutionContext,
    config: RewardModelConfig,
    sft_checkpoint: Path,
    preference_data: Path,
    artifacts: ArtifactStoreResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.Output:
    """Scalar-head reward model with `rm_eval.json`: held-out accuracy, margin, calibration, dropped pairs."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    from pipeline.storage.checkpoints import checkpoint_key, training_scratch
    from pipeline.training.reward_model import train_reward_model

    refuse_if_input_gates_failed(context)
    settings, launch = settings_from(config, RewardSettings), settings_from(config, LaunchSettings)
    pairs = load_data(preference_data)
    context.log.info(f"reward model on {len(pairs)} pairs from {preference_data}")
    store = artifacts.store()
    key = checkpoint_key([settings, launch], {"sft_checkpoint": sft_checkpoint, "preference_data": preference_data})
    # Checkpoints outlive a killed run (the next run with this key resumes) and go once the artifact is committed.
    with training_scratch(store, "reward_model", key) as checkpoints, store.stage("reward_model") as staged:
        if checkpoints.resume_from is not None:
            context.log.info(f"resuming the reward model from {checkpoints.resume_from} (a previous run was interrupted)")
        metrics = train_with_launcher(
            context, pipes_subprocess_client, "reward_model", launch,
            lambda: train_reward_model(sft_checkpoint, pairs, staged.path, settings, checkpoints),
            {"sft_checkpoint": sft_checkpoint, "checkpoints": checkpoints}, pairs, staged.path, settings,
        )
        (staged.path / RM_EVAL_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_model_card(context, staged.path)
    if metrics["n_dropped_too_long"]:
        context.log.warning(
            f"{metrics['n_dropped_too_long']} of {metrics['n_train']} training pairs exceed "
            f"max_length={settings.max_length} tokens and were dropped by the trainer"
        )
    output = artifact_output(context, staged.path, {
        "held_out_accuracy": metrics["held_out_accuracy"],
        "mean_margin": metrics["mean_margin"],
        "reward_length_correlation": metrics["reward_length_correlation"],
        "n_dropped_too_long": metrics["n_dropped_too_long"],
        "n_train": metrics["n_train"],
        "n_held_out": metrics["n_held_out"],
        "total_steps": metrics["total_steps"],
        "resumed_from_step": metrics["resumed_from_step"],
        "launcher": launcher_label(launch),
        "calibration": dg.MetadataValue.md(markdown_table(metrics["calibration"])),
        "accuracy_by_failure_mode": dg.MetadataValue.json(metrics["accuracy_by_failure_mode"]),
    })
    return record_in_dvc(context, output)
