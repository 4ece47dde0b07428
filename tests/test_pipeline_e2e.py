"""End-to-end: the whole graph on the tiny profile with `dg.materialize`, then every artifact reloads."""

import json
from pathlib import Path

import dagster as dg
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.definitions import defs, rlhf_pipeline
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource


def _materialization(instance, key: str):
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    assert event is not None, f"{key} was not materialized"
    return event.asset_materialization


def test_whole_graph_materializes_and_artifacts_reload(tiny_run_config, artifacts_root, dagster_instance):
    assets = list(defs.assets)
    result = dg.materialize(
        assets,
        instance=dagster_instance,
        run_config=tiny_run_config,
        resources={"artifacts": ArtifactStoreResource(root=str(artifacts_root)), "io_manager": ArtifactIOManager()},
    )
    assert result.success
    for key in ("base_model", "base_probe", "sft_data", "preference_data", "ppo_prompts", "eval_prompts",
                "sft_checkpoint", "reward_model", "ppo_policy", "evaluation_report"):
        metadata = _materialization(dagster_instance, key).metadata
        path = Path(metadata["artifact_path"].value)
        assert path.is_dir() and path.parent.parent == artifacts_root.resolve()
        assert len(metadata["content_hash"].value) == 64

    def path_of(key):
        return Path(_materialization(dagster_instance, key).metadata["artifact_path"].value)

    base = path_of("base_model")
    assert (base / "model_name.txt").read_text().strip().startswith("tiny-llama")
    AutoModelForCausalLM.from_pretrained(base)
    assert (path_of("base_probe") / "generation_probe.jsonl").exists()
    assert (path_of("base_probe") / "base_probe.md").read_text().startswith("# Base model probe")

    sft = path_of("sft_checkpoint")
    AutoModelForCausalLM.from_pretrained(sft)
    AutoTokenizer.from_pretrained(sft)
    sft_eval = json.loads((sft / "sft_eval.json").read_text())
    assert sft_eval["held_out_loss"] < sft_eval["held_out_loss_before"], "SFT should lower held-out loss"

    rm = path_of("reward_model")
    reward = AutoModelForSequenceClassification.from_pretrained(rm)
    assert reward.config.num_labels == 1
    rm_eval = json.loads((rm / "rm_eval.json").read_text())
    for field in ("held_out_accuracy", "mean_margin", "calibration", "n_dropped_too_long"):
        assert field in rm_eval
    report = path_of("evaluation_report")
    evaluation = json.loads((report / "eval.json").read_text())
    for model in ("base", "sft", "ppo"):
        assert len(evaluation["models"][model]["rm_score_ci95"]) == 2
    assert set(evaluation["win_rates"]) == {"ppo_vs_sft", "sft_vs_base", "ppo_vs_base"}
    assert evaluation["kl_ppo_vs_sft"] is not None
    assert evaluation["inputs"]["ppo_policy"] == str(path_of("ppo_policy"))
    assert (report / "final_eval.md").exists() and (report / "plots" / "ppo_training_curves.png").exists()

    # No staging directories are left behind.
    assert not list(artifacts_root.rglob(".staging-*"))


def test_job_covers_every_asset():
    job = defs.resolve_job_def("rlhf_pipeline")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"base_model", "base_probe", "sft_data", "preference_data", "ppo_prompts", "eval_prompts",
            "sft_checkpoint", "reward_model", "ppo_policy", "evaluation_report"} <= keys
    assert rlhf_pipeline.name == "rlhf_pipeline"
