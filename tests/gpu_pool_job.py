"""A job of two `gpu`-pool steps and one CPU step for tests/test_execution.py.

The multiprocess executor needs a reconstructable job, and its step processes import this module,
so it is kept apart from the test module (which imports the whole pipeline).
"""

import json
import time
from pathlib import Path

import dagster as dg

GPU_POOL = "gpu"  # pipeline.orchestration.execution.GPU_POOL; not imported, to keep step processes light


def _record_interval(context, name: str) -> None:
    start = time.time()
    time.sleep(1.0)
    Path(context.op_config["log_dir"], f"{name}.json").write_text(json.dumps([start, time.time()]))


@dg.op(pool=GPU_POOL, config_schema={"log_dir": str})
def gpu_step_a(context):
    _record_interval(context, "gpu_a")


@dg.op(pool=GPU_POOL, config_schema={"log_dir": str})
def gpu_step_b(context):
    _record_interval(context, "gpu_b")


@dg.op(config_schema={"log_dir": str})
def cpu_step(context):
    _record_interval(context, "cpu")


@dg.job(executor_def=dg.multiprocess_executor.configured({"start_method": {"forkserver": {"preload_modules": ["dagster"]}}}))
def gpu_pool_job():
    gpu_step_a()
    gpu_step_b()
    cpu_step()
