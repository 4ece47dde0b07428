"""The PPO policy: our InstructGPT-style PPO from the SFT checkpoint against the frozen reward model."""


from pathlib import Path

import dagster as dg

from pipeline.data.records import load_data
from pipeline.evaluation.markdown import markdown_table
from pipeline.orchestration.execution import gpu_op_tags
from pipeline.orchestration.incremental import reuse_if_unchanged
from pipeline.orchestration.launchers import PIPES_CLIENT_KEY, launcher_label, train_with_launcher
from pipeline.orchestration.mlflow_tracking import record_in_mlflow
from pipeline.orchestration.model_card import write_model_card
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.resources import PIPES_SUBPROCESS_CLIENT, ArtifactStoreResource
from pipeline.settings import LaunchSettings, PpoSettings, settings_from
from pipeline.storage.contract import PPO_CURVES_FILE
from quality_gates.refusal import refuse_if_input_gates_failed

PPO_CODE_VERSION = "2"


class PpoConfig(dg.Config, PpoSettings, LaunchSettings):
    pass


@dg.asset(group_name="models", code_version=PPO_CODE_VERSION, pool="gpu", op_tags=gpu_op_tags(), kinds={"pytorch"},
          resource_defs={PIPES_CLIENT_KEY: PIPES_SUBPROCESS_CLIENT})
def ppo_policy(
    context: dg.AssetExecutionContext,
    config: PpoConfig,
    sft_checkpoint: Path,
    reward_model: Path,
    ppo_prompts: Path,
    artifacts: ArtifactStoreResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.Output:
    """PPO policy (HF directory) + `value_model/`, `ppo_train_metrics.jsonl`, `ppo_summary.json`, `training_curves.png`."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    from pipeline.ppo.algorithm import progress_line, train_ppo
    from pipeline.storage.checkpoints import checkpoint_key, training_scratch

    refuse_if_input_gates_failed(context)
    settings, launch = settings_from(config, PpoSettings), settings_from(config, LaunchSettings)
    if settings.ptx_coef > 0:
        raise ValueError(
            f"ppo_policy config: ptx_coef={settings.ptx_coef} asks for PPO-ptx, but this asset has no PPO-ptx records "
            "to mix in (train_ppo takes them as ptx_records when called from Python); set ptx_coef: 0"
        )
    prompt_records = [{"prompt": record["prompt"]} for record in load_data(ppo_prompts)]
    prompts = [record["prompt"] for record in prompt_records]
    context.log.info(f"PPO on {len(prompts)} prompts from {ppo_prompts}")
    store = artifacts.store()
    key = checkpoint_key(
        [settings, launch], {"sft_checkpoint": sft_checkpoint, "reward_model": reward_model, "ppo_prompts": ppo_prompts},
    )
    # Checkpoints outlive a killed run (a re-run with this key resumes) and go once the artifact is committed.
    with training_scratch(store, "ppo_policy", key) as checkpoints, store.stage("ppo_policy") as staged:
        if checkpoints.resume_from is not None:
            context.log.info(f"resuming PPO from {checkpoints.resume_from} (a previous run was interrupted)")
        summary = train_with_launcher(
            context, pipes_subprocess_client, "ppo_policy", launch,
            lambda: train_ppo(
                sft_checkpoint, reward_model, prompts, staged.path, settings, checkpoint_dir=checkpoints.directory,
                on_step=lambda record: context.log.debug(progress_line(record)),
            ),
            {"sft_checkpoint": sft_checkpoint, "reward_model": reward_model, "checkpoints": checkpoints},
            prompt_records, staged.path, settings,
        )
        write_model_card(context, staged.path)
    stopped = summary["stopped_at_kl_bound"]
    if stopped is not None:
        context.log.warning(
            f"PPO stopped at step {stopped['step']} of {summary['n_steps_planned']}: KL {stopped['kl']:.2f} passed "
            f"kl_bound={settings.kl_bound}; kept the policy after {stopped['kept_policy_of_step']} updates"
        )
    if summary["n_prompts_truncated"]:
        context.log.warning(
            f"{summary['n_prompts_truncated']} of {len(prompts)} prompts were longer than {summary['max_prompt_tokens']} "
            f"tokens (the context window minus max_new_tokens) and were cut from the left"
        )
    if summary["kl_to_sft"] > settings.kl_bound:
        context.log.warning(f"mean KL to SFT {summary['kl_to_sft']:.2f} exceeds kl_bound={settings.kl_bound}")
    output = artifact_output(context, staged.path, {
        "rm_score_sft": summary["rm_score_sft"],
        "rm_score_ppo": summary["rm_score_ppo"],
        "kl_to_sft": summary["kl_to_sft"],
        "kl_bound": settings.kl_bound,
        "response_length_sft": summary["response_length_sft"],
        "response_length_ppo": summary["response_length_ppo"],
        "response_length_ratio": summary["response_length_ratio"],
        "n_steps": summary["n_steps"],
        "n_steps_planned": summary["n_steps_planned"],
        "stopped_at_kl_bound": dg.MetadataValue.json(stopped) if stopped else "no",
        "episodes": summary["episodes"],
        "episodes_per_second": summary["episodes_per_second"],
        "resumed_from_step": summary["resumed_from_step"],
        "launcher": launcher_label(launch),
        "max_prompt_tokens": summary["max_prompt_tokens"] if summary["max_prompt_tokens"] is not None else "no limit",
        "n_prompts_truncated": summary["n_prompts_truncated"],
        "training_curves": dg.MetadataValue.path(str(staged.path / PPO_CURVES_FILE)),
        "samples": dg.MetadataValue.md(markdown_table(summary["samples"], max_chars=200)),
    })
    return record_in_dvc(context, record_in_mlflow(context, output))
