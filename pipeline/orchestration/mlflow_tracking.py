"""MLflow, when `MLFLOW_TRACKING_URI` is set: one MLflow run per computed stage, linked both ways with Dagster.

A training stage (and the evaluation report) that computed its artifact ends with

    output = artifact_output(context, staged.path, {...})
    return record_in_dvc(context, record_in_mlflow(context, output))

`record_in_mlflow` creates one MLflow run in the experiment `$MLFLOW_EXPERIMENT_NAME` (default
`rlhf_pipeline`) holding:

- params: the stage's config as the run used it (defaults filled in, secrets masked), nested keys dotted;
- metrics: every curve of the artifact's `tensorboard/` event files, step by step (losses, learning
  rate, every PPO metric, the end-of-training evaluation), and every number of the materialization
  metadata (held-out accuracy, win rates, KL...) once;
- tags: `dagster_run_id` (the tag dagster-mlflow uses too), `dagster_asset_key`, `content_hash`,
  `artifact_path`, `code_version`, `git_commit`.

and returns the output with `mlflow_run_id` and `mlflow_experiment` added to its metadata, so the
asset's page in the Dagster UI names the MLflow run and the MLflow run names the Dagster run. A
reused stage creates no run: its metadata, copied from the materialization that computed it, keeps
that run's MLflow id. Without `MLFLOW_TRACKING_URI` nothing here imports or calls MLflow.

It is MLflow's own client (`MlflowClient`, which speaks to a file store, a database or a tracking
server alike), not dagster-mlflow: that resource opens one MLflow run per Dagster run, not per
stage, and its package requires `pandas<3` and the full `mlflow` server distribution; the pipeline
needs only the client (`mlflow-skinny`). Nor the trainers' `report_to="mlflow"`: it would cover two
of the four training stages, and it logs every TrainingArguments field as a param, which clash with
the stage's own settings of the same name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.orchestration.materializations import metadata_value
from pipeline.storage.contract import (
    ARTIFACT_PATH_KEY,
    CODE_VERSION_KEY,
    CONFIG_KEY,
    CONTENT_HASH_KEY,
    GIT_COMMIT_KEY,
    MLFLOW_EXPERIMENT_KEY,
    MLFLOW_RUN_ID_KEY,
    TENSORBOARD_DIR,
)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "rlhf_pipeline"
DAGSTER_RUN_ID_TAG = "dagster_run_id"
ASSET_KEY_TAG = "dagster_asset_key"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
# MLflow's limits on one log_batch request.
METRICS_PER_BATCH, PARAMS_PER_BATCH = 1000, 100


def mlflow_enabled() -> bool:
    return bool(os.environ.get(TRACKING_URI_ENV))


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT


def record_in_mlflow(context: dg.AssetExecutionContext, output: dg.Output) -> dg.Output:
    """Log the computed stage as one MLflow run and return the output with the run's id; unchanged without MLflow.

    A tracking server that cannot be reached does not fail the stage (its artifact is already
    committed): the error is logged as a warning and recorded as `mlflow_error`.
    """
    if not mlflow_enabled():
        return output
    asset_name = context.asset_key.to_user_string()
    try:
        run_id = _log_run(context.run_id, asset_name, output)
    except Exception as error:  # noqa: BLE001 - tracking is a record of the stage, not the stage
        context.log.warning(f"MLflow: could not record {asset_name}: {type(error).__name__}: {error}")
        return output.with_metadata({**output.metadata, "mlflow_error": f"{type(error).__name__}: {error}"[:500]})
    context.log.info(f"MLflow: {asset_name} recorded as run {run_id} in experiment {experiment_name()!r}")
    return output.with_metadata({
        **output.metadata, MLFLOW_RUN_ID_KEY: run_id, MLFLOW_EXPERIMENT_KEY: experiment_name(),
    })


def _log_run(dagster_run_id: str, asset_name: str, output: dg.Output) -> str:
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    metadata = {key: metadata_value(value) for key, value in output.metadata.items()}
    client = MlflowClient()  # the tracking URI from $MLFLOW_TRACKING_URI
    experiment = client.get_experiment_by_name(experiment_name())
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name())
    tags = {
        DAGSTER_RUN_ID_TAG: dagster_run_id,
        ASSET_KEY_TAG: asset_name,
        CONTENT_HASH_KEY: metadata.get(CONTENT_HASH_KEY),
        ARTIFACT_PATH_KEY: str(output.value),
        CODE_VERSION_KEY: metadata.get(CODE_VERSION_KEY),
        GIT_COMMIT_KEY: metadata.get(GIT_COMMIT_KEY),
    }
    run = client.create_run(
        experiment_id, run_name=f"{asset_name} {dagster_run_id[:8]}",
        tags={key: str(value) for key, value in tags.items() if value is not None},
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in _flatten(metadata.get(CONFIG_KEY) or {})]
    metrics = [Metric(tag, value, int(wall_time * 1000), step) for tag, step, value, wall_time in
               _event_file_scalars(Path(output.value) / TENSORBOARD_DIR)]
    metrics += [Metric(key, float(value), now, 0) for key, value in metadata.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)]
    for start in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + PARAMS_PER_BATCH])
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + METRICS_PER_BATCH])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _event_file_scalars(log_dir: Path) -> Iterator[tuple[str, int, float, float]]:
    """(tag, step, value, wall time) of every scalar TensorBoard shows for `log_dir` (none if it is absent)."""
    if not log_dir.is_dir():
        return
    from pipeline.training.tensorboard_log import read_scalars

    for tag, events in read_scalars(log_dir).items():
        for event in events:
            yield tag, event.step, event.value, event.wall_time


def _flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`{"a": {"b": 1}}` -> ("a.b", 1); lists as JSON."""
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", json.dumps(value) if isinstance(value, (list, dict)) else value
