"""The base checkpoint and a probe of how it answers before any post-training."""


import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from pipeline.evaluation.markdown import markdown_table
from pipeline.orchestration.execution import gpu_op_tags
from pipeline.orchestration.incremental import reuse_if_unchanged
from pipeline.orchestration.mlflow_tracking import record_in_mlflow
from pipeline.orchestration.model_card import write_model_card
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.resources import ArtifactStoreResource
from pipeline.settings import PretrainSettings, TinyModelSpec, settings_from
from pipeline.storage.contract import MODEL_NAME_FILE, PROBE_FILE, PROBE_REPORT


class BaseModelConfig(dg.Config, TinyModelSpec, PretrainSettings):
    model_name_or_path: str | None = Field(
        None, description="an HF causal LM (local directory or hub id); default: build and pretrain a tiny Llama here"
    )
    revision: str | None = Field(None, description="pin a hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint (only if you trust it)")
    allow_pickle: bool = Field(False, description="allow loading .bin (pickle) weights instead of safetensors only")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")


class BaseProbeConfig(dg.Config):
    max_new_tokens: int = Field(48, gt=0)
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")


@dg.asset(group_name="models", code_version="1", pool="gpu", op_tags=gpu_op_tags(), kinds={"pytorch"})
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, artifacts: ArtifactStoreResource) -> dg.Output:
    """The base checkpoint (HF `save_pretrained` directory with its tokenizer)."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    from pipeline.training.base_model import build_default_base_model, load_pretrained, resolved_revision
    from pipeline.training.context_window import context_length
    from pipeline.training.device import select_device

    metadata: dict = {}
    changes: list[str] = []
    with artifacts.store().stage("base_model") as staged:
        if config.model_name_or_path:
            model, tokenizer, changes = load_pretrained(
                config.model_name_or_path, config.revision, config.trust_remote_code, config.allow_pickle
            )
            name = config.model_name_or_path + (f"@{config.revision}" if config.revision else "")
            if revision := resolved_revision(model):  # the commit a branch or tag pointed to when this ran
                metadata["resolved_revision"] = revision
            if changes:  # what the checkpoint lacked and got; never silent
                context.log.info("base_model: " + "; ".join(changes))
                metadata["added_to_checkpoint"] = dg.MetadataValue.md("\n".join(f"- {change}" for change in changes))
        else:
            device = select_device(config.device).device

            def on_progress(step: int, loss: float) -> None:
                if step % 50 == 0 or step == config.pretrain_steps - 1:
                    context.log.debug(f"pretraining step {step + 1}/{config.pretrain_steps}: loss {loss:.3f}")

            # Pretraining curves go to TensorBoard straight in the staging directory (it does not resume).
            model, tokenizer, losses = build_default_base_model(
                settings_from(config, TinyModelSpec),
                settings_from(config, PretrainSettings),
                device,
                on_progress,
                scratch=staged.path,
            )
            name = "tiny-llama (built locally)"
            if losses:
                metadata["pretrain_loss_first"] = losses[0]
                metadata["pretrain_loss_last"] = losses[-1]
        model.save_pretrained(staged.path)
        tokenizer.save_pretrained(staged.path)
        (staged.path / MODEL_NAME_FILE).write_text(name + "\n")
        write_model_card(context, staged.path, changes=changes)
    n_params = sum(p.numel() for p in model.parameters())
    output = artifact_output(context, staged.path, {
        "model_name": name,
        "n_parameters": n_params,
        "vocab_size": len(tokenizer),
        "context_length": context_length(model.config),
        **metadata,
    })
    return record_in_dvc(context, record_in_mlflow(context, output))


@dg.asset(group_name="evaluation", code_version="1", pool="gpu", op_tags=gpu_op_tags(), kinds={"pytorch"})
def base_probe(
    context: dg.AssetExecutionContext, config: BaseProbeConfig, base_model: Path, artifacts: ArtifactStoreResource
) -> dg.Output:
    """The base model's answers to a fixed probe prompt set (held-out phrasings)."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    from pipeline.data.generator import PROBE_PROMPTS
    from pipeline.training.device import select_device
    from pipeline.training.generation import generate, load_causal_lm

    model, tokenizer = load_causal_lm(base_model, select_device(config.device))
    generations = generate(model, tokenizer, PROBE_PROMPTS, max_new_tokens=config.max_new_tokens)
    rows = [
        {"prompt": g.prompt, "response": g.response, "ended_with_eos": g.ended_with_eos, "n_tokens": g.n_tokens}
        for g in generations
    ]
    table = markdown_table(rows, ["prompt", "response", "ended_with_eos"], max_chars=200)
    report = f"# Base model probe\n\nModel: `{base_model}`\n\n{table}\n"
    with artifacts.store().stage("base_probe") as staged:
        with open(staged.path / PROBE_FILE, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        (staged.path / PROBE_REPORT).write_text(report)
    output = artifact_output(context, staged.path, {
        "n_prompts": len(rows),
        "ends_with_eos_rate": sum(r["ended_with_eos"] for r in rows) / len(rows),
        "probe": dg.MetadataValue.md(report),
    })
    return record_in_dvc(context, output)
