"""Two runs of the job at once, in two processes, on one DAGSTER_HOME, one artifacts root and one DVC
project: both succeed, every materialization points to a complete artifact, the instance's
databases pass an integrity check, dvc.lock agrees with the artifacts, and no access token from
the environment is written anywhere.

The runs are the part of `rlhf_pipeline` from the base model through SFT, with all four data
assets and their quality gates, in process: the whole job with the multiprocess executor twice
at once (a process per step) takes many minutes on two shared cores.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline.storage.artifacts import STAGING_PREFIX
from pipeline.storage.checkpoints import CHECKPOINTS_DIR
from pipeline.storage.dvc import dvc_executable
from test_crash_safety import (
    REPO_ROOT, TINY_BASE, assert_every_materialization_points_to_its_complete_artifact, job_environment,
    materializations, start_job,
)

FAKE_HF_TOKEN = "hf_" + "Kx7" * 11
RUN_TIMEOUT_S = 480
TARGETS = "sft_checkpoint,preference_data,ppo_prompts,eval_prompts"  # and everything upstream

# The tiny profile, smaller still: two of these share two CPU cores.
OVERRIDES = {
    "base_model": TINY_BASE,
    "sft_data": {"n_records": 32},
    "preference_data": {"n_records": 32},
    "ppo_prompts": {"n_records": 12},
    "eval_prompts": {"n_records": 8},
    "sft_checkpoint": {"n_format_samples": 2, "max_new_tokens": 8, "checkpoint_every_steps": 2},
}


def concurrent_run_config() -> dict:
    tiny = yaml.safe_load((REPO_ROOT / "pipeline" / "profiles" / "tiny.yaml").read_text())["ops"]
    return {"ops": {op: {"config": {**tiny.get(op, {}).get("config", {}), **values}} for op, values in OVERRIDES.items()}}


def _integrity_of_sqlite_files(home: Path) -> dict[str, str]:
    results = {}
    for db in home.rglob("*.db"):
        with sqlite3.connect(db) as connection:
            results[str(db.relative_to(home))] = connection.execute("PRAGMA integrity_check").fetchone()[0]
    return results


@pytest.mark.slow
def test_two_concurrent_job_runs_keep_artifacts_instance_and_dvc_consistent(tmp_path):
    project = tmp_path / "project"  # a DVC project (dvc.yaml) around the artifacts root, as in the repo
    project.mkdir()
    shutil.copy(REPO_ROOT / "dvc.yaml", project / "dvc.yaml")
    env = job_environment(tmp_path, RLHF_DVC="auto", HF_TOKEN=FAKE_HF_TOKEN, HUGGING_FACE_HUB_TOKEN=FAKE_HF_TOKEN)
    env["RLHF_ARTIFACTS_ROOT"] = str(project / "artifacts")
    home, root = Path(env["DAGSTER_HOME"]), Path(env["RLHF_ARTIFACTS_ROOT"])
    config_path = tmp_path / "run_config.yaml"
    config_path.write_text(yaml.safe_dump(concurrent_run_config()))

    # Dagster creates its SQLite schema on first use, and two processes doing that at the same moment
    # collide ("table runs already exists"); an instance that has been used once is what is tested.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs()

    logs = [tmp_path / f"run{i}.log" for i in (1, 2)]
    started = time.monotonic()
    processes = [start_job(env, config_path, TARGETS, log) for log in logs]
    for process, log in zip(processes, logs):
        try:
            process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in processes:
                os.killpg(other.pid, signal.SIGKILL)
            pytest.fail(f"concurrent runs did not finish in {RUN_TIMEOUT_S}s")
        assert process.returncode == 0, f"run failed:\n{log.read_text()[-6000:]}"
    print(f"\ntwo concurrent runs took {time.monotonic() - started:.0f}s")

    data_assets = ["sft_data", "preference_data", "ppo_prompts", "eval_prompts"]
    assets = ["base_model", *data_assets, "sft_checkpoint"]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    for asset in assets:
        records = materializations(home, asset)
        assert len(records) == 2, f"{asset}: one materialization per run (computed, or reused from the other run)"
        if asset in data_assets:  # model cards name the run that made them, so only data is byte-identical
            assert len({r["hash"] for r in records}) == 1, f"{asset}: same seed and inputs, same content"
    assert_every_materialization_points_to_its_complete_artifact(home, assets)
    assert not list(root.rglob(f"{STAGING_PREFIX}*")), "no staging directory or lock is left"
    assert not [p for p in root.glob(f"*/{CHECKPOINTS_DIR}/*") if p.is_dir()], "no training checkpoint is left"
    assert set(_integrity_of_sqlite_files(home).values()) <= {"ok"}

    # DVC: one stage per asset in dvc.lock, holding the hash one of the runs recorded (the last writer's),
    # and `dvc status` finds the workspace, the cache and dvc.lock in agreement.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for asset in assets:
        recorded = {r["metadata"].get("dvc_md5") for r in materializations(home, asset)}
        (out,) = lock["stages"][asset]["outs"]
        assert out["md5"] in recorded, f"{asset}: dvc.lock holds a hash no materialization recorded"
        if asset in data_assets:
            assert recorded == {out["md5"]}
    status = subprocess.run([dvc_executable(), "status", "--json", *assets], cwd=project, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr

    # The token in the environment of both runs appears in no artifact, database, log or output.
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and FAKE_HF_TOKEN.encode() in p.read_bytes()]
    assert leaks == [], f"access token written to {leaks}"


def test_sweep_removes_abandoned_staging_but_never_a_live_one(tmp_path):
    from pipeline.storage.artifacts import ArtifactStore, sweep_abandoned_staging

    store = ArtifactStore(tmp_path / "artifacts")
    parent = store.asset_dir("sft_data")
    parent.mkdir(parents=True)
    abandoned = parent / f"{STAGING_PREFIX}abandoned"  # what a killed writer leaves: no lock held
    abandoned.mkdir()
    (abandoned / "half_written.bin").write_bytes(b"\0" * 10)
    with store.stage("sft_data") as staged:  # sweeps on entry
        assert not abandoned.exists()
        (staged.path / "data.jsonl").write_text("{}\n")
        # flock is per open file, so a sweep from this same process sees the lock as another writer's.
        assert sweep_abandoned_staging(parent) == [] and staged.path.exists()
    assert staged.path.is_dir() and not staged.path.name.startswith(".")
    assert sorted(p.name for p in parent.iterdir()) == [staged.path.name], "no staging dir or lock file is left"


def test_two_trainings_with_one_key_do_not_share_checkpoints(tmp_path):
    from pipeline.storage.artifacts import ArtifactStore
    from pipeline.storage.checkpoints import training_scratch

    store = ArtifactStore(tmp_path / "artifacts")
    with training_scratch(store, "sft_checkpoint", "key1") as first:
        (first.directory / "checkpoint-5").mkdir()
        (first.directory / "checkpoint-5" / "trainer_state.json").write_text("{}")
        with training_scratch(store, "sft_checkpoint", "key1") as second:
            assert first.shared and not second.shared
            assert second.directory != first.directory and second.resume_from is None
        assert not second.directory.exists(), "a private directory is removed: nobody could resume from it"
    assert not first.directory.exists(), "checkpoints go once the training block succeeds"


def test_a_failed_training_keeps_its_checkpoints_for_the_next_run(tmp_path):
    from pipeline.storage.artifacts import ArtifactStore
    from pipeline.storage.checkpoints import training_scratch

    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(RuntimeError):
        with training_scratch(store, "sft_checkpoint", "key2") as scratch:
            for step in (5, 10):
                (scratch.directory / f"checkpoint-{step}").mkdir()
                (scratch.directory / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
            (scratch.directory / "checkpoint-15").mkdir()  # killed while saving: no trainer state yet
            raise RuntimeError("out of memory")
    with training_scratch(store, "sft_checkpoint", "key2") as again:
        assert again.resume_from == again.directory / "checkpoint-10" and again.resume_step == 10
        assert not (again.directory / "checkpoint-15").exists(), "the incomplete checkpoint is dropped"
