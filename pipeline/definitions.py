"""The Dagster code location: every asset, its checks, the resources and the `rlhf_pipeline` job.

    dagster job execute -m pipeline.definitions -j rlhf_pipeline [-c run_config.yaml]
"""

from __future__ import annotations

import os

# Before any of them is imported: no per-file bars from Hugging Face's libraries (weight loading,
# dataset maps, downloads); each long stage draws one bar of its own (pipeline.training.progress).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers follows this one too
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import dagster as dg  # noqa: E402

from assets import base, data, evaluation, ppo, reward, sft  # noqa: E402
from pipeline.orchestration.execution import pipeline_executor
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource
from quality_gates.checks import quality_gate_checks

all_assets = dg.load_assets_from_modules([base, data, sft, reward, ppo, evaluation])

# What the console says: INFO and above (what each stage did and found) unless $RLHF_LOG_LEVEL says
# otherwise; `make run LOG_LEVEL=DEBUG` brings back every Dagster engine event. The run's event log
# (web UI, `rlhf summary`) keeps everything whatever the level.
CONSOLE_LOG_LEVEL = os.environ.get("RLHF_LOG_LEVEL", "INFO").upper()

executor = pipeline_executor()  # $RLHF_EXECUTOR: multiprocess (default) or k8s

rlhf_pipeline = dg.define_asset_job(
    "rlhf_pipeline",
    selection=dg.AssetSelection.all(),
    description="base model -> SFT -> reward model -> PPO -> evaluation report, with quality gates",
    # Steps run in one process unless the run config says `execution: {config: {multiprocess: {}}}`:
    # a step process spends seconds importing torch/transformers, which dominates a re-run whose
    # stages are reused (benchmarks/bench_pipeline.py, README "Performance"). Not for k8s: a pod per step.
    config={
        "loggers": {"console": {"config": {"log_level": CONSOLE_LOG_LEVEL}}},
        **({"execution": {"config": {"in_process": {}}}} if executor is dg.multi_or_in_process_executor else {}),
    },
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=[
        *quality_gate_checks(all_assets),  # only gates whose assets are defined
        *dg.load_asset_checks_from_modules([evaluation]),
    ],
    jobs=[rlhf_pipeline],
    executor=executor,
    resources={
        "artifacts": ArtifactStoreResource(root=os.environ.get("RLHF_ARTIFACTS_ROOT", "artifacts")),
        "io_manager": ArtifactIOManager(),
    },
)
