"""Crash safety: a job killed with SIGKILL mid-training leaves every earlier artifact as it was, records
no materialization of the half-trained asset, and the next run resumes from the last checkpoint.

The job (`rlhf_pipeline`, the part of it up to the asset under test) runs in a subprocess on a
DAGSTER_HOME and artifacts root of its own, in its own process group, which is killed as a whole
the moment a checkpoint is on disk. (`dagster asset materialize --select` would be the natural
command, but string asset selections crash with the antlr4 runtime that DVC's hydra pins, and
`dagster job execute -o` cannot subset a job with asset checks.)
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline.artifacts import STAGING_PREFIX, content_hash
from pipeline.training_checkpoints import CHECKPOINTS_DIR, complete_checkpoints

REPO_ROOT = Path(__file__).resolve().parents[1]
KILL_TIMEOUT_S = 420

# A small base model (no pretraining: SFT is what is under test) and an SFT long enough to be
# killed in the middle: about 20 steps per epoch, a checkpoint every 5.
TINY_BASE = {"pretrain_steps": 0, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
             "intermediate_size": 64, "pretrain_documents": 100, "vocab_size": 400}
SFT_RUN_CONFIG = {"ops": {
    "base_model": {"config": TINY_BASE},
    "sft_data": {"config": {"n_records": 96}},
    "eval_prompts": {"config": {"n_records": 8}},  # the SFT data's eval-leak gate reads them
    "sft_checkpoint": {"config": {"epochs": 4, "batch_size": 4, "checkpoint_every_steps": 5,
                                  "n_format_samples": 2, "max_new_tokens": 8, "held_out_fraction": 0.05}},
}}


def job_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RLHF_ARTIFACTS_ROOT": str(tmp_path / "artifacts"),
        "RLHF_DVC": "off",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


# Runs the job's subset that materializes the given assets and everything upstream of them.
JOB_RUNNER = """
import sys, yaml, dagster as dg
from pipeline.definitions import defs
targets = dg.AssetSelection.assets(*sys.argv[2].split(","))
job = defs.resolve_job_def("rlhf_pipeline")
keys = targets.upstream().resolve(defs.resolve_asset_graph())
with dg.DagsterInstance.get() as instance:
    result = job.execute_in_process(
        run_config=yaml.safe_load(open(sys.argv[1])), instance=instance, asset_selection=list(keys), raise_on_error=False,
    )
sys.exit(0 if result.success else 1)
"""


def start_job(env: dict[str, str], config_path: Path, selection: str, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", JOB_RUNNER, str(config_path), selection]
    log = open(log_path, "ab")
    # A new session makes the job the leader of its own process group, so the kill reaches its step processes too.
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(process: subprocess.Popen, condition, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the job ended (rc {process.returncode}) before {what}:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {KILL_TIMEOUT_S}s")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_job(env, config_path, selection, log_path) -> None:
    process = start_job(env, config_path, selection, log_path)
    if process.wait(timeout=KILL_TIMEOUT_S) != 0:
        pytest.fail(f"job failed (rc {process.returncode}):\n{log_path.read_text()[-6000:]}")


def materializations(home: Path, asset: str) -> list[dict]:
    """(artifact path, recorded hash, metadata) of every materialization of `asset`, oldest first."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
        found = []
        for record in sorted(records, key=lambda r: r.storage_id):
            metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
            found.append({"path": Path(str(metadata["artifact_path"])), "hash": metadata["content_hash"], "metadata": metadata})
        return found


def assert_every_materialization_points_to_its_complete_artifact(home: Path, assets) -> None:
    for asset in assets:
        for record in materializations(home, asset):
            assert record["path"].is_dir(), f"{asset}: {record['path']} is gone"
            assert not record["path"].name.startswith("."), f"{asset} points to a staging directory"
            assert content_hash(record["path"]) == record["hash"], f"{asset}: {record['path']} changed or is partial"


def committed_versions(root: Path, asset: str) -> list[Path]:
    asset_dir = root / asset
    return sorted(p for p in asset_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if asset_dir.exists() else []


@pytest.mark.slow
def test_sigkill_during_sft_keeps_artifacts_and_rerun_resumes(tmp_path):
    env = job_environment(tmp_path)
    home, root = Path(env["DAGSTER_HOME"]), Path(env["RLHF_ARTIFACTS_ROOT"])
    config_path = tmp_path / "run_config.yaml"
    config_path.write_text(yaml.safe_dump(SFT_RUN_CONFIG))
    log_path = tmp_path / "job.log"
    checkpoints_root = root / "sft_checkpoint" / CHECKPOINTS_DIR

    def newest_complete_step() -> int:
        steps = [step for key_dir in checkpoints_root.glob("*") if key_dir.is_dir() for step, _ in complete_checkpoints(key_dir)]
        return max(steps, default=0)

    process = start_job(env, config_path, "sft_checkpoint,eval_prompts", log_path)
    kill_when(process, lambda: newest_complete_step() >= 40, "SFT checkpoint at step 40 (of about 90)", log_path)
    killed_at = newest_complete_step()

    upstream = ("base_model", "sft_data")
    before = {asset: materializations(home, asset) for asset in upstream}
    assert all(len(before[a]) == 1 for a in upstream), "base_model and sft_data finish before SFT starts"
    assert materializations(home, "sft_checkpoint") == [], "a killed SFT must record no materialization"
    assert committed_versions(root, "sft_checkpoint") == [], "a killed SFT must commit no artifact directory"
    assert_every_materialization_points_to_its_complete_artifact(home, upstream)
    assert list((root / "sft_checkpoint").glob(f"{STAGING_PREFIX}*")), "the killed run's staging dir is left (and swept later)"

    started = time.monotonic()
    run_job(env, config_path, "sft_checkpoint,eval_prompts", log_path)  # the same job again
    rerun_seconds = time.monotonic() - started

    (sft,) = materializations(home, "sft_checkpoint")
    resumed_from, total = sft["metadata"]["resumed_from_step"], sft["metadata"]["total_steps"]
    assert killed_at <= resumed_from < total, "the re-run resumes from the newest checkpoint, not from step 0"
    sft_eval = json.loads((sft["path"] / "sft_eval.json").read_text())
    assert sft_eval["resumed_from_step"] == resumed_from
    assert sft_eval["loss_curve"][0]["step"] <= 5, "the loss curve keeps the steps trained before the kill"

    # Earlier artifacts are untouched; the re-run reuses them (pipeline.incremental), so SFT sees the same
    # inputs and finds its checkpoints under the same key.
    for asset in upstream:
        after = materializations(home, asset)
        assert after[0] == before[asset][0]
        assert after[-1]["hash"] == before[asset][0]["hash"], f"{asset}: the re-run reads the same content"
    assert_every_materialization_points_to_its_complete_artifact(home, (*upstream, "sft_checkpoint"))
    assert not list((root / "sft_checkpoint").glob(f"{STAGING_PREFIX}*")), "abandoned staging dir is swept"
    assert not [p for p in checkpoints_root.iterdir() if p.is_dir()], "checkpoints are removed after success"
    seconds_per_step = sft_eval["train_seconds_this_run"] / (total - resumed_from)
    print(f"\nSFT resume: killed after step {killed_at}, resumed from step {resumed_from} of {total} "
          f"({resumed_from / total:.0%} of training skipped, about {resumed_from * seconds_per_step:.1f}s of "
          f"{total * seconds_per_step:.1f}s); the whole re-run took {rerun_seconds:.1f}s")


def ppo_run_config() -> dict:
    """The tiny profile (its reward model passes the gates that guard PPO) with a PPO of 12 steps."""
    config = yaml.safe_load((REPO_ROOT / "pipeline" / "profiles" / "tiny.yaml").read_text())
    config["ops"]["ppo_policy"]["config"].update(
        {"total_episodes": 48, "batch_size": 4, "minibatch_size": 4, "checkpoint_every": 2, "n_eval_prompts": 2}
    )
    config["ops"].pop("base_probe", None)  # not upstream of PPO
    return config


@pytest.mark.slow
def test_sigkill_during_ppo_keeps_artifacts_and_rerun_resumes(tmp_path):
    env = job_environment(tmp_path)
    home, root = Path(env["DAGSTER_HOME"]), Path(env["RLHF_ARTIFACTS_ROOT"])
    config_path = tmp_path / "run_config.yaml"
    config_path.write_text(yaml.safe_dump(ppo_run_config()))
    log_path = tmp_path / "job.log"
    checkpoints_root = root / "ppo_policy" / CHECKPOINTS_DIR

    def newest_complete_step() -> int:
        steps = [step for key_dir in checkpoints_root.glob("*") if key_dir.is_dir() for step, _ in complete_checkpoints(key_dir)]
        return max(steps, default=0)

    targets = "ppo_policy,eval_prompts"
    process = start_job(env, config_path, targets, log_path)
    kill_when(process, lambda: newest_complete_step() >= 4, "PPO checkpoint at step 4 (of 12)", log_path)
    killed_at = newest_complete_step()

    upstream = ("base_model", "sft_data", "preference_data", "ppo_prompts", "sft_checkpoint", "reward_model")
    before = {asset: materializations(home, asset) for asset in upstream}
    assert all(len(before[a]) == 1 for a in upstream), "everything PPO reads is materialized before it starts"
    assert materializations(home, "ppo_policy") == [], "a killed PPO must record no materialization"
    assert committed_versions(root, "ppo_policy") == [], "a killed PPO must commit no artifact directory"
    assert_every_materialization_points_to_its_complete_artifact(home, upstream)

    started = time.monotonic()
    run_job(env, config_path, targets, log_path)
    rerun_seconds = time.monotonic() - started

    (ppo,) = materializations(home, "ppo_policy")
    resumed_from = ppo["metadata"]["resumed_from_step"]
    summary = json.loads((ppo["path"] / "ppo_summary.json").read_text())
    total = summary["n_steps"]
    assert killed_at <= resumed_from < total, "the re-run resumes PPO from the newest checkpoint, not from step 0"
    for asset in upstream:
        assert materializations(home, asset)[0] == before[asset][0], f"{asset}'s first materialization is unchanged"
    assert_every_materialization_points_to_its_complete_artifact(home, (*upstream, "ppo_policy"))
    assert not [p for p in checkpoints_root.glob("*") if p.is_dir()], "checkpoints are removed after success"
    print(f"\nPPO resume: killed after step {killed_at}, resumed from step {resumed_from} of {total} "
          f"({resumed_from / total:.0%} of PPO steps skipped); the whole re-run took {rerun_seconds:.1f}s")
