"""Experiment tracking: TensorBoard event files read back with TensorBoard's own reader (EventAccumulator),
MLflow runs read back with mlflow's client from a file store.

The whole job's curves and MLflow runs are checked on the tiny-profile CLI run of
tests/test_cli_job.py (`assert_training_curves_in_artifacts`, `assert_mlflow_runs` below), and a
resumed run's curves by tests/test_crash_safety.py.
"""

import json
import os
from pathlib import Path
from unittest import mock

import dagster as dg

from pipeline.storage.contract import MLFLOW_RUN_ID_KEY, PPO_METRICS_FILE, TENSORBOARD_DIR
from pipeline.training import tensorboard_log
from pipeline.training.tensorboard_log import ScalarLog, publish_event_files

TRAINING_STAGES = ("base_model", "sft_checkpoint", "reward_model", "ppo_policy")
MLFLOW_STAGES = (*TRAINING_STAGES, "evaluation_report")


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (its EventAccumulator; orphaned steps of a killed run purged)."""
    return {
        tag: [(event.step, event.value) for event in events]
        for tag, events in tensorboard_log.read_scalars(log_dir).items()
    }


def test_scalars_are_logged_by_step_and_non_numbers_skipped(tmp_path):
    with ScalarLog(tmp_path) as scalars:
        for step in (1, 2, 4):
            scalars.log({"loss": 1.0 / step, "note": "text", "ptx_loss": None, "flag": True}, step, prefix="train/")
    assert read_scalars(tmp_path / TENSORBOARD_DIR) == {"train/loss": [(1, 1.0), (2, 0.5), (4, 0.25)]}


def test_resumed_run_continues_the_same_curve(tmp_path):
    """A run killed after step 5 resumes from its checkpoint of step 3: steps 4 and 5 are trained again,
    and TensorBoard shows one curve 1..8, the resumed run's values from step 4 on."""
    with ScalarLog(tmp_path) as killed:
        for step in range(1, 6):
            killed.log({"loss": float(step)}, step)
    with ScalarLog(tmp_path, resume_step=3) as resumed:
        for step in range(4, 9):
            resumed.log({"loss": 10.0 * step}, step)
    assert len(list((tmp_path / TENSORBOARD_DIR).iterdir())) == 2  # one log dir, one file per run
    assert read_scalars(tmp_path / TENSORBOARD_DIR)["loss"] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0),
    ]


def test_event_files_are_copied_into_the_artifact(tmp_path):
    scratch, artifact = tmp_path / "checkpoints", tmp_path / "staging"
    artifact.mkdir()
    with ScalarLog(scratch) as scalars:
        scalars.log({"loss": 1.0}, 1)
    assert publish_event_files(scratch, artifact) == artifact / TENSORBOARD_DIR
    assert read_scalars(artifact / TENSORBOARD_DIR) == {"loss": [(1, 1.0)]}
    assert publish_event_files(artifact, artifact) == artifact / TENSORBOARD_DIR  # written in place: nothing to copy
    assert publish_event_files(tmp_path / "nothing", artifact) is None


def artifact_path(instance: dg.DagsterInstance, asset: str) -> Path:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return Path(str(event.asset_materialization.metadata["artifact_path"].value))


def assert_training_curves_in_artifacts(instance: dg.DagsterInstance) -> None:
    """Each training stage's artifact holds its TensorBoard curves: losses and learning rate per step,
    every PPO metric of ppo_train_metrics.jsonl per step, and the evaluation at the end."""
    scalars = {stage: read_scalars(artifact_path(instance, stage) / TENSORBOARD_DIR) for stage in TRAINING_STAGES}
    for stage in ("base_model", "sft_checkpoint", "reward_model"):
        assert {"train/loss", "train/learning_rate"} <= set(scalars[stage]), f"{stage}: {sorted(scalars[stage])}"
        steps = [step for step, _ in scalars[stage]["train/loss"]]
        assert steps == sorted(set(steps)) and len(steps) >= 2, f"{stage}: loss logged at steps {steps}"
    assert "eval/loss" in scalars["sft_checkpoint"] and "eval/format_adherence" in scalars["sft_checkpoint"]
    assert "eval/held_out_accuracy" in scalars["reward_model"]

    history = [json.loads(line) for line in (artifact_path(instance, "ppo_policy") / PPO_METRICS_FILE).read_text().splitlines()]
    metrics = {name for record in history for name, value in record.items() if name != "step" and value is not None}
    ppo = scalars["ppo_policy"]
    assert {f"ppo/{name}" for name in metrics} <= set(ppo), f"missing: {sorted(metrics - {t[4:] for t in ppo})}"
    for name in metrics:
        assert [step for step, _ in ppo[f"ppo/{name}"]] == [record["step"] for record in history], name
    assert ppo["ppo/kl"] == [(record["step"], ppo["ppo/kl"][i][1]) for i, record in enumerate(history)]
    assert "eval/kl_to_sft" in ppo and "eval/rm_score_ppo" in ppo


def assert_mlflow_runs(instance: dg.DagsterInstance, dagster_run_id: str, tracking_uri: str) -> None:
    """One MLflow run per training stage and one for the report, tagged with the Dagster run, asset and
    content hash, with the stage's config as params and its curves as metrics; each materialization names its run."""
    from mlflow import MlflowClient

    with mock.patch.dict(os.environ, {"MLFLOW_ALLOW_FILE_STORE": "true"}):  # MLflow 3.17 asks for it to read a file store
        client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("rlhf_pipeline")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.dagster_run_id = '{dagster_run_id}'")
    by_asset = {run.data.tags["dagster_asset_key"]: run for run in runs}
    assert sorted(by_asset) == sorted(MLFLOW_STAGES) and len(runs) == len(MLFLOW_STAGES)
    for asset, run in by_asset.items():
        metadata = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata
        assert metadata[MLFLOW_RUN_ID_KEY].value == run.info.run_id, f"{asset}: metadata names another MLflow run"
        assert run.data.tags["content_hash"] == metadata["content_hash"].value
        assert run.data.tags["artifact_path"] == str(metadata["artifact_path"].value)
        assert run.info.status == "FINISHED"
    assert by_asset["ppo_policy"].data.params["total_episodes"] == "16"  # the tiny profile's config
    assert float(by_asset["sft_checkpoint"].data.params["epochs"]) == 1
    assert "ppo_vs_sft_win_rate_rm" in by_asset["evaluation_report"].data.metrics
    n_steps = len((artifact_path(instance, "ppo_policy") / PPO_METRICS_FILE).read_text().splitlines())
    kl_history = client.get_metric_history(by_asset["ppo_policy"].info.run_id, "ppo/kl")
    assert [m.step for m in kl_history] == list(range(1, n_steps + 1))


def test_mlflow_run_of_a_stage(tmp_path, monkeypatch):
    """`record_in_mlflow` on a toy stage: params from its config, metrics from its curves and metadata,
    the tags, and the MLflow run id back in the materialization; nothing at all without the variable."""
    from mlflow import MlflowClient

    from pipeline.orchestration.mlflow_tracking import record_in_mlflow
    from pipeline.orchestration.outputs import artifact_output

    class ToyConfig(dg.Config):
        learning_rate: float = 0.5
        schedule: dict = {"warmup": 2}

    @dg.asset(code_version="1")
    def toy_stage(context: dg.AssetExecutionContext, config: ToyConfig) -> dg.Output:
        path = tmp_path / "artifact" / context.run_id[:8]
        path.mkdir(parents=True)
        with ScalarLog(path) as scalars:
            for step in (1, 2, 3):
                scalars.log({"loss": 1.0 / step}, step, prefix="train/")
        return record_in_mlflow(context, artifact_output(context, path, {"accuracy": 0.75, "note": "text"}))

    with dg.instance_for_test() as instance:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert dg.materialize([toy_stage], instance=instance).success
        metadata = instance.get_latest_materialization_event(toy_stage.key).asset_materialization.metadata
        assert MLFLOW_RUN_ID_KEY not in metadata

        uri = f"file:{tmp_path / 'mlruns'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        result = dg.materialize([toy_stage], instance=instance)
        metadata = instance.get_latest_materialization_event(toy_stage.key).asset_materialization.metadata
    run = MlflowClient(uri).get_run(metadata[MLFLOW_RUN_ID_KEY].value)
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.tags["dagster_asset_key"] == "toy_stage"
    assert run.data.tags["content_hash"] == metadata["content_hash"].value
    assert run.data.params == {"learning_rate": "0.5", "schedule.warmup": "2"}
    assert run.data.metrics["accuracy"] == 0.75
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
