"""Dagster's own selection strings, from its CLI: `dagster asset materialize -m pipeline.definitions --select ...`
re-runs one stage, or a stage and what is downstream of it, as a user types it in a terminal or CI.

Selection strings go through Dagster's ANTLR grammar, which needs the antlr4 4.13 runtime; DVC's
hydra/omegaconf pin 4.9, which is why DVC lives in its own environment (pipeline/storage/dvc.py).
"""

import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from test_cli_job import DAGSTER_CLI, IN_PROCESS, JOB_TIMEOUT_S, PROJECT_INSTANCE_CONFIG, REPO_ROOT, TINY_PROFILE, output_tail

DOWNSTREAM_OF_SFT = {"sft_checkpoint", "reward_model", "ppo_policy", "evaluation_report"}


def test_selection_strings_resolve_on_the_asset_graph():
    from pipeline.definitions import defs

    graph = defs.resolve_asset_graph()

    def resolve(selection: str) -> set[str]:
        return {key.to_user_string() for key in dg.AssetSelection.from_string(selection).resolve(graph)}

    assert resolve("sft_checkpoint+") == DOWNSTREAM_OF_SFT
    assert resolve("+base_probe") == {"base_model", "base_probe"}
    assert resolve("key:sft_data or key:eval_prompts") == {"sft_data", "eval_prompts"}


def test_dagster_asset_list_takes_a_selection_string():
    completed = subprocess.run(
        [str(DAGSTER_CLI), "asset", "list", "-m", "pipeline.definitions", "--select", "sft_checkpoint+"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, output_tail(completed)
    assert set(completed.stdout.split()) == DOWNSTREAM_OF_SFT


class AssetCli:
    """`dagster asset materialize` in a subprocess on one fresh DAGSTER_HOME and artifacts root, with the
    tiny profile and the in-process executor (tests/test_cli_job.py says why)."""

    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "dagster_home"
        self.home.mkdir()
        shutil.copy(PROJECT_INSTANCE_CONFIG, self.home / "dagster.yaml")
        self.executor_file = tmp_path / "in_process.yaml"
        self.executor_file.write_text(yaml.safe_dump(IN_PROCESS))
        self.log = tmp_path / "materialize.log"
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "RLHF_ARTIFACTS_ROOT": str(tmp_path / "artifacts"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }

    def materialize(self, selection: str) -> set[str]:
        """Run `dagster asset materialize --select SELECTION`; the assets that its run materialized."""
        before = {run.run_id for run in self.runs()}
        command = [str(DAGSTER_CLI), "asset", "materialize", "-m", "pipeline.definitions", "--select", selection,
                   "-c", str(TINY_PROFILE), "-c", str(self.executor_file)]
        completed = subprocess.run(command, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True,
                                   timeout=JOB_TIMEOUT_S)
        with open(self.log, "a") as log:
            log.write(f"$ {' '.join(command)}\n{completed.stdout}{completed.stderr}\n")
        assert completed.returncode == 0, f"--select {selection!r} exited {completed.returncode}:\n{output_tail(completed)}"
        (run,) = [run for run in self.runs() if run.run_id not in before]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            entries = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            return {entry.dagster_event.asset_key.to_user_string() for entry in entries}

    def runs(self) -> list[dg.DagsterRun]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return list(instance.get_runs())


@pytest.mark.slow
def test_asset_materialize_reruns_one_stage_and_a_downstream_selection(tmp_path):
    cli = AssetCli(tmp_path)
    # The inputs: the base model (upstream of its probe) and the held-out prompts that the SFT data's
    # leak gate compares against.
    assert cli.materialize("+base_probe,eval_prompts") == {"base_model", "base_probe", "eval_prompts"}
    # One stage again, reading its input's latest materialization.
    assert cli.materialize("base_probe") == {"base_probe"}
    # A stage and what reads it (`sft_checkpoint+` is the same grammar, resolved above, but re-runs RM, PPO
    # and the evaluation: the whole job again).
    assert cli.materialize("sft_data+") == {"sft_data", "sft_checkpoint"}
