"""`dagster job execute` as a user's CI runs it: a subprocess, a run-config file, a fresh DAGSTER_HOME.

The exit code is what CI sees; the Dagster instance is what the web UI and `rlhf lineage` read
afterwards, so both are checked.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline.data import generator as data_generator
from pipeline.data.records import write_jsonl
from test_experiment_tracking import assert_mlflow_runs, assert_training_curves_in_artifacts

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_PROFILE = REPO_ROOT / "pipeline" / "profiles" / "tiny.yaml"
PROJECT_INSTANCE_CONFIG = REPO_ROOT / ".dagster" / "dagster.yaml"
DAGSTER_CLI = Path(sys.executable).with_name("dagster")  # the venv's console script, as on a user's PATH
RLHF_CLI = Path(sys.executable).with_name("rlhf")
JOB_TIMEOUT_S = 1800  # generous: the suite shares a few CPU cores; a hang still ends the test
# A second run-config file, merged by `dagster job execute` with the first: all steps in one process.
# With the default multiprocess executor every step and check starts a process that loads the code
# location (torch, pandera, Great Expectations): about 4x the time of the tiny job itself on 2 cores.
# Exit codes, gates and materializations do not depend on the executor; the multiprocess executor
# and the `gpu` pool are exercised by tests/test_execution.py.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def execute_job(
    config_file: Path, tmp_path: Path, extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess, dg.DagsterInstance]:
    """Run the job as CI would and open the instance it wrote to."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The project's instance settings (telemetry off, the `gpu` pool limit) apply as under `make run`.
    shutil.copy(PROJECT_INSTANCE_CONFIG, home / "dagster.yaml")
    artifacts_root = tmp_path / "artifacts"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RLHF_ARTIFACTS_ROOT": str(artifacts_root),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(extra_env or {}),
    }
    executor_file = tmp_path / "in_process.yaml"
    executor_file.write_text(yaml.safe_dump(IN_PROCESS))
    command = [str(DAGSTER_CLI), "job", "execute", "-m", "pipeline.definitions", "-j", "rlhf_pipeline",
               "-c", str(config_file), "-c", str(executor_file)]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    (tmp_path / "job.log").write_text(completed.stdout + completed.stderr)
    return completed, dg.DagsterInstance.from_config(str(home))


def run_summary(tmp_path: Path, run_id: str) -> subprocess.CompletedProcess:
    """`rlhf summary` of the run, as `make run` prints it after the job."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    return subprocess.run([str(RLHF_CLI), "summary", "--run", run_id], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def output_tail(completed: subprocess.CompletedProcess, n_chars: int = 4000) -> str:
    return (completed.stdout + completed.stderr)[-n_chars:]


def only_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    runs = instance.get_runs()
    assert len(runs) == 1, f"expected one run in the fresh instance, found {len(runs)}"
    assert runs[0].job_name == "rlhf_pipeline"
    return runs[0]


def check_evaluations(instance: dg.DagsterInstance, run_id: str) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = (entry.dagster_event.event_specific_data for entry in entries)
    return {(e.asset_key.to_user_string(), e.check_name): e for e in evaluations}


@pytest.mark.slow
def test_job_execute_on_tiny_profile_materializes_every_asset(tmp_path):
    """The whole job on the tiny profile, with MLflow on (a file store): every asset, every check, the
    TensorBoard curves and MLflow runs of the training stages (tests/test_experiment_tracking.py), and
    the closing summary."""
    mlflow_uri = f"file:{tmp_path / 'mlruns'}"
    completed, instance = execute_job(TINY_PROFILE, tmp_path, {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3.17 asks for this to use a file store (a database needs no flag)
    })
    with instance:
        assert completed.returncode == 0, f"dagster job execute exited {completed.returncode}:\n{output_tail(completed)}"
        run = only_run(instance)
        assert run.status == dg.DagsterRunStatus.SUCCESS

        from pipeline.definitions import defs

        job = defs.resolve_job_def("rlhf_pipeline")
        artifacts_root = (tmp_path / "artifacts").resolve()
        for key in job.asset_layer.executable_asset_keys:
            event = instance.get_latest_materialization_event(key)
            assert event is not None, f"{key.to_user_string()} has no materialization in the instance"
            assert event.run_id == run.run_id
            path = Path(str(event.asset_materialization.metadata["artifact_path"].value))
            assert path.is_dir() and artifacts_root in path.parents, f"{key.to_user_string()}: artifact at {path}"

        evaluated = set(check_evaluations(instance, run.run_id))
        expected = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
        assert expected <= evaluated, f"checks never evaluated in the CLI run: {sorted(expected - evaluated)}"

        # The console shows INFO and above by default, and no warning about the beta APIs used knowingly.
        assert " - DEBUG - " not in completed.stderr and "STEP_START" not in completed.stderr
        assert "BetaWarning" not in completed.stderr

        assert_training_curves_in_artifacts(instance)
        assert_mlflow_runs(instance, run.run_id, mlflow_uri)

        summary = run_summary(tmp_path, run.run_id)
        assert summary.returncode == 0, summary.stderr
        text = summary.stdout
        assert f"rlhf_pipeline: SUCCESS in " in text and run.run_id in text
        computed = next(line for line in text.splitlines() if line.startswith("computed:"))
        for key in job.asset_layer.executable_asset_keys:
            assert key.to_user_string() in computed
        assert "reused:" not in text  # a fresh instance reuses nothing
        n_checks = len(expected)
        assert f"of {n_checks} passed" in text
        for asset_name, check_name in expected:
            line = next(line for line in text.splitlines() if line.strip().startswith(asset_name + " "))
            assert check_name in line, f"{asset_name}:{check_name} has no verdict in the summary"
        assert "PPO vs SFT win rate" in text and "reward model" in text and "KL(PPO || SFT)" in text
        assert "final_eval.md" in text and "rlhf lineage ppo_policy" in text and "http://127.0.0.1:3000" in text
        assert "MLflow" in text
        print(text)


@pytest.mark.slow
def test_eval_prompt_in_user_sft_file_fails_the_job(tmp_path):
    """A user's SFT file that contains a held-out evaluation prompt trips the blocking eval-leak gate."""
    run_config = yaml.safe_load(TINY_PROFILE.read_text())
    eval_records = data_generator.prompt_records(16, seed=0, split="eval")
    leaked_prompt = eval_records[3]["prompt"]
    sft_records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in data_generator.sft_records(64, seed=0)]
    sft_records.insert(10, {"prompt": leaked_prompt, "completion": "An answer copied from the benchmark."})
    write_jsonl(sft_records, tmp_path / "my_sft.jsonl")
    write_jsonl([{"prompt": r["prompt"]} for r in eval_records], tmp_path / "my_eval_prompts.jsonl")
    run_config["ops"]["sft_data"]["config"] = {"source": str(tmp_path / "my_sft.jsonl")}
    run_config["ops"]["eval_prompts"]["config"] = {"source": str(tmp_path / "my_eval_prompts.jsonl")}
    config_file = tmp_path / "run_config.yaml"
    config_file.write_text(yaml.safe_dump(run_config))

    completed, instance = execute_job(config_file, tmp_path)
    with instance:
        assert completed.returncode != 0, f"the job succeeded despite the leak:\n{output_tail(completed)}"
        assert "resulted in failure" in completed.stderr
        run = only_run(instance)
        assert run.status == dg.DagsterRunStatus.FAILURE

        leak = check_evaluations(instance, run.run_id).get(("sft_data", "eval_leak"))
        assert leak is not None, "the sft_data eval_leak gate did not run"
        assert not leak.passed and leak.severity == dg.AssetCheckSeverity.ERROR
        assert leak.metadata["n_leaked_records"].value == 1
        assert leaked_prompt in leak.metadata["leaked_rows"].value
        # Blocked within the run: nothing is trained on the leaked data.
        assert instance.get_latest_materialization_event(dg.AssetKey("sft_checkpoint")) is None

        # The summary names the gate, its reason in one line, and what was not run because of it.
        summary = run_summary(tmp_path, run.run_id)
        assert summary.returncode == 1, summary.stdout + summary.stderr
        text = summary.stdout
        print(text)
        assert "rlhf_pipeline: FAILURE" in text
        failed = next(line for line in text.splitlines() if line.startswith("FAILED:"))
        assert "sft_data:eval_leak" in failed and "1 of" in failed
        not_run = next(line for line in text.splitlines() if line.startswith("not run because of it:"))
        for asset in ("sft_checkpoint", "reward_model", "ppo_policy", "evaluation_report"):
            assert asset in not_run
        assert "PPO vs SFT" not in text  # no evaluation ran
