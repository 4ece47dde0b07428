"""Crash safety: a job killed with SIGKILL mid-training (SFT, the reward model, PPO in one process and on two) leaves every earlier artifact as it was, records
no materialization of the half-trained asset, and the next run resumes from the last checkpoint.

The job (`rlhf_pipeline`, the part of it up to the asset under test) runs in a subprocess on a
DAGSTER_HOME and artifacts root of its own, in its own process group, which is killed as a whole
the moment a checkpoint is on disk. It runs the job's subset in process (`execute_in_process` with an
asset selection): `dagster job execute -o` cannot subset a job with asset checks, and
`dagster asset materialize --select` (tests/test_cli_selection.py) would load the run config per asset.
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

from pipeline.storage.artifacts import STAGING_PREFIX, content_hash
from pipeline.storage.contract import TENSORBOARD_DIR
from pipeline.storage.checkpoints import CHECKPOINTS_DIR, complete_checkpoints
from test_experiment_tracking import read_scalars

REPO_ROOT = Path(__file__).resolve().parents[1]
KILL_TIMEOUT_S = 420

# The base model of the concurrency test: small, no pretraining.
TINY_BASE = {"pretrain_steps": 0, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
             "intermediate_size": 64, "pretrain_documents": 100, "vocab_size": 400}


def kill_test_run_config() -> dict:
    """The tiny profile (its reward model passes the gates that guard PPO) with an SFT of about 60 steps and a
    reward model of about 90 (a checkpoint every 5), and a PPO of 12 steps (a checkpoint every 2) on two
    processes under `accelerate launch` (DDP over gloo), so that each can be killed midway."""
    config = yaml.safe_load((REPO_ROOT / "pipeline" / "profiles" / "tiny.yaml").read_text())
    ops = config["ops"]
    ops["sft_checkpoint"]["config"].update({"epochs": 4, "batch_size": 4, "checkpoint_every_steps": 5})
    ops["reward_model"]["config"].update({"epochs": 6, "batch_size": 4, "checkpoint_every_steps": 5})
    ops["ppo_policy"]["config"].update({
        "total_episodes": 48, "batch_size": 4, "minibatch_size": 4, "checkpoint_every": 2, "n_eval_prompts": 2,
        "launcher": "accelerate", "num_processes": 2, "distributed": "ddp",
    })
    ops.pop("base_probe", None)  # not upstream of PPO
    return config


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


def newest_complete_checkpoint(root: Path, asset: str) -> int:
    steps = [step for key_dir in (root / asset / CHECKPOINTS_DIR).glob("*") if key_dir.is_dir()
             for step, _ in complete_checkpoints(key_dir)]
    return max(steps, default=0)


def assert_killed_cleanly(home: Path, root: Path, killed: str, upstream) -> dict:
    """Nothing of the killed asset was recorded or committed; everything upstream is complete."""
    assert materializations(home, killed) == [], f"a killed {killed} must record no materialization"
    assert committed_versions(root, killed) == [], f"a killed {killed} must commit no artifact directory"
    assert_every_materialization_points_to_its_complete_artifact(home, upstream)
    return {asset: materializations(home, asset) for asset in upstream}


def steps_kept_by_a_kill_halfway(n_steps: int, every: int) -> int:
    """Steps saved in the newest checkpoint when a run of `n_steps` is killed after n_steps / 2 of them."""
    return (n_steps // 2) // every * every


def test_default_checkpoint_cadences_keep_at_least_40_percent_of_a_run_killed_halfway():
    import math

    from assets.data import PreferenceDataConfig, SftDataConfig
    from pipeline.data.records import split_held_out
    from pipeline.settings import PpoSettings, RewardSettings, SftSettings

    def trainer_steps(n_records: int, held_out_fraction: float, batch_size: int, epochs: float) -> int:
        train, _ = split_held_out([{}] * n_records, held_out_fraction, 0)
        return math.ceil(math.ceil(len(train) / batch_size) * epochs)

    sft, rm, ppo = SftSettings(), RewardSettings(), PpoSettings()
    steps = {  # the default profile: the stages' default settings on the data assets' default sizes
        "sft_checkpoint": (trainer_steps(SftDataConfig().n_records, sft.held_out_fraction, sft.batch_size, sft.epochs),
                           sft.checkpoint_every_steps),
        "reward_model": (trainer_steps(PreferenceDataConfig().n_records, rm.held_out_fraction, rm.batch_size, rm.epochs),
                         rm.checkpoint_every_steps),
        "ppo_policy": (ppo.total_episodes // ppo.batch_size, ppo.checkpoint_every),
    }
    assert steps["sft_checkpoint"][0] == 791 and steps["reward_model"][0] == 856 and steps["ppo_policy"][0] == 16
    for stage, (n_steps, every) in steps.items():
        assert steps_kept_by_a_kill_halfway(n_steps, every) >= 0.4 * n_steps, stage


@pytest.mark.slow
def test_sigkill_during_sft_the_reward_model_and_distributed_ppo_then_each_rerun_resumes(tmp_path):
    """Run 1 is killed mid-SFT; run 2 (the same job) resumes SFT and is killed mid-RM; run 3 resumes the RM and
    is killed mid-PPO on two processes; run 4 resumes PPO there and finishes."""
    env = job_environment(tmp_path)
    home, root = Path(env["DAGSTER_HOME"]), Path(env["RLHF_ARTIFACTS_ROOT"])
    config_path = tmp_path / "run_config.yaml"
    config_path.write_text(yaml.safe_dump(kill_test_run_config()))
    log_path = tmp_path / "job.log"
    targets = "ppo_policy,eval_prompts"  # and everything upstream

    # Run 1: killed once SFT has a checkpoint at step 20 or later.
    process = start_job(env, config_path, targets, log_path)
    kill_when(process, lambda: newest_complete_checkpoint(root, "sft_checkpoint") >= 20, "SFT checkpoint at step 20", log_path)
    sft_killed_at = newest_complete_checkpoint(root, "sft_checkpoint")
    before_sft = assert_killed_cleanly(home, root, "sft_checkpoint", ("base_model", "sft_data"))
    assert list((root / "sft_checkpoint").glob(f"{STAGING_PREFIX}*")), "the killed run's staging dir is left (and swept later)"

    # Run 2: the same job again; killed once the reward model has a checkpoint at step 20 or later.
    process = start_job(env, config_path, targets, log_path)
    kill_when(process, lambda: newest_complete_checkpoint(root, "reward_model") >= 20, "RM checkpoint at step 20", log_path)
    rm_killed_at = newest_complete_checkpoint(root, "reward_model")
    assert_killed_cleanly(home, root, "reward_model", ("base_model", "sft_data", "preference_data", "sft_checkpoint"))

    (sft,) = materializations(home, "sft_checkpoint")
    sft_resumed, sft_total = sft["metadata"]["resumed_from_step"], sft["metadata"]["total_steps"]
    assert sft_killed_at <= sft_resumed < sft_total, "run 2 resumes SFT from the newest checkpoint, not from step 0"
    sft_eval = json.loads((sft["path"] / "sft_eval.json").read_text())
    assert sft_eval["resumed_from_step"] == sft_resumed
    assert sft_eval["loss_curve"][0]["step"] <= 5, "the loss curve keeps the steps trained before the kill"
    # TensorBoard shows one curve over every step: the killed run's up to the checkpoint, then the resumed run's.
    sft_curve = read_scalars(sft["path"] / TENSORBOARD_DIR)["train/loss"]
    assert [step for step, _ in sft_curve] == list(range(1, sft_total + 1))
    # The earlier artifacts are untouched, and run 2 read the same content (reused: pipeline.orchestration.incremental),
    # which is why SFT found its checkpoints under the same key.
    for asset, records in before_sft.items():
        assert materializations(home, asset)[0] == records[0]
        assert materializations(home, asset)[-1]["hash"] == records[0]["hash"]
    assert not list((root / "sft_checkpoint").glob(f"{STAGING_PREFIX}*")), "abandoned staging dir is swept"
    assert not [p for p in (root / "sft_checkpoint" / CHECKPOINTS_DIR).iterdir() if p.is_dir()], \
        "SFT checkpoints are removed after success"

    # Run 3: resumes the reward model; killed once PPO, on two processes, has a checkpoint at step 4 or later.
    process = start_job(env, config_path, targets, log_path)
    kill_when(process, lambda: newest_complete_checkpoint(root, "ppo_policy") >= 4, "PPO checkpoint at step 4", log_path)
    ppo_killed_at = newest_complete_checkpoint(root, "ppo_policy")
    time.sleep(3)
    assert newest_complete_checkpoint(root, "ppo_policy") == ppo_killed_at, "no rank outlives the killed job"
    upstream_of_ppo = ("base_model", "sft_data", "preference_data", "ppo_prompts", "sft_checkpoint", "reward_model")
    before_ppo = assert_killed_cleanly(home, root, "ppo_policy", upstream_of_ppo)
    (rm,) = materializations(home, "reward_model")
    rm_resumed, rm_total = rm["metadata"]["resumed_from_step"], rm["metadata"]["total_steps"]
    assert rm_killed_at <= rm_resumed < rm_total, "run 3 resumes the reward model from the newest checkpoint"
    rm_eval = json.loads((rm["path"] / "rm_eval.json").read_text())
    assert rm_eval["resumed_from_step"] == rm_resumed and rm_eval["loss_curve"][0]["step"] <= 5
    assert not [p for p in (root / "reward_model" / CHECKPOINTS_DIR).iterdir() if p.is_dir()], \
        "RM checkpoints are removed after success"

    # Run 4: resumes PPO on two processes.
    started = time.monotonic()
    run_job(env, config_path, targets, log_path)
    rerun_seconds = time.monotonic() - started
    (ppo,) = materializations(home, "ppo_policy")
    assert ppo["metadata"]["launcher"] == "accelerate x2 (ddp)"
    ppo_resumed = ppo["metadata"]["resumed_from_step"]
    summary = json.loads((ppo["path"] / "ppo_summary.json").read_text())
    ppo_total = summary["n_steps"]
    assert ppo_resumed == ppo_killed_at < ppo_total == 12, "run 4 resumes PPO from the newest checkpoint, not from step 0"
    assert summary["num_processes"] == 2
    steps = [json.loads(line)["step"] for line in (ppo["path"] / "ppo_train_metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)), "the metrics keep the steps trained before the kill, each once"
    ppo_curve = read_scalars(ppo["path"] / TENSORBOARD_DIR)["ppo/kl"]
    assert [step for step, _ in ppo_curve] == list(range(1, ppo_total + 1)), "the resumed TensorBoard curve continues"
    for asset, records in before_ppo.items():
        assert materializations(home, asset)[0] == records[0], f"{asset}'s first materialization is unchanged"
    assert_every_materialization_points_to_its_complete_artifact(home, (*upstream_of_ppo, "ppo_policy"))
    assert not [p for p in (root / "ppo_policy" / CHECKPOINTS_DIR).glob("*") if p.is_dir()], \
        "PPO checkpoints are removed after success"

    seconds_per_sft_step = sft_eval["train_seconds_this_run"] / (sft_total - sft_resumed)
    print(f"\nSFT resume: killed after step {sft_killed_at}, resumed from step {sft_resumed} of {sft_total} "
          f"({sft_resumed / sft_total:.0%} of SFT skipped, about {sft_resumed * seconds_per_sft_step:.1f}s of "
          f"{sft_total * seconds_per_sft_step:.1f}s)")
    print(f"RM resume: killed after step {rm_killed_at}, resumed from step {rm_resumed} of {rm_total}")
    print(f"PPO resume (2 processes): killed after step {ppo_killed_at}, resumed from step {ppo_resumed} of {ppo_total} "
          f"({ppo_resumed / ppo_total:.0%} of PPO steps skipped); run 4 took {rerun_seconds:.1f}s")
