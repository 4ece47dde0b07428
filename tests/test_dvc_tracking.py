"""DVC records the same artifacts as Dagster: stages follow the asset graph, dvc.lock hashes match metadata."""

import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline.storage.artifacts import content_hash
from pipeline.storage.dvc import (
    DvcTracking, DvcTrackingError, dvc_executable, dvc_yaml_for_graph, restore_version, tracking_for,
)
from pipeline.orchestration.lineage import upstream_tree
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource
from test_lineage import materialize_toy, toy_data, toy_model

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dvc_project(tmp_path, monkeypatch) -> Path:
    """A git repo with a dvc.yaml for the toy graph and no .dvc/ yet (the pipeline must init it)."""
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    graph = {"toy_data": [], "toy_model": ["toy_data"]}
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml_for_graph(graph), sort_keys=False))
    (project / "artifacts").mkdir()
    monkeypatch.delenv("RLHF_DVC", raising=False)
    monkeypatch.delenv("RLHF_DVC_ROOT", raising=False)
    return project


def _metadata(instance, asset):
    return instance.fetch_materializations(dg.AssetKey(asset), limit=1).records[0].asset_materialization.metadata


def _lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def test_materializations_are_recorded_in_dvc_with_matching_hashes(dvc_project, dagster_instance):
    artifacts = dvc_project / "artifacts"
    materialize_toy(dagster_instance, artifacts, text="v1")

    assert (dvc_project / ".dvc" / "config").read_text().count("../.dvc-remote") == 1
    tracking = DvcTracking(dvc_project)
    assert tracking.status() == {}, "dvc status must be clean right after a run"
    assert tracking.stage_edges() == {("toy_data", "toy_model")}
    lock = _lock(dvc_project)
    data_md, model_md = _metadata(dagster_instance, "toy_data"), _metadata(dagster_instance, "toy_model")
    assert lock["toy_data"]["outs"][0]["md5"] == data_md["dvc_md5"].value
    assert lock["toy_model"]["outs"][0]["md5"] == model_md["dvc_md5"].value
    assert lock["toy_model"]["deps"][0]["md5"] == data_md["dvc_md5"].value
    assert model_md["dvc_out"].value == "artifacts/toy_model/current"
    # `current` is the version Dagster recorded, byte for byte.
    for md in (data_md, model_md):
        assert content_hash(dvc_project / md["dvc_out"].value) == md["content_hash"].value
    tree = upstream_tree(dagster_instance, "toy_model")
    assert tree.inputs[0].dvc_md5 == lock["toy_model"]["deps"][0]["md5"]

    # A new data version makes the model stale for DVC too, until the model is re-materialized.
    first_data_version = Path(data_md["artifact_path"].value)
    materialize_toy(dagster_instance, artifacts, text="v2", selection=[toy_data])
    status = tracking.status()
    assert set(status) == {"toy_model"}, status
    materialize_toy(dagster_instance, artifacts, selection=[toy_model])
    assert tracking.status() == {}
    assert (first_data_version / "data.txt").read_text() == "v1", "old versions are never overwritten"
    assert (artifacts / "toy_data" / "current" / "data.txt").read_text() == "v2"


def test_push_and_pull_restore_artifacts(dvc_project, dagster_instance):
    import shutil

    artifacts = dvc_project / "artifacts"
    materialize_toy(dagster_instance, artifacts, text="to be restored")
    tracking = DvcTracking(dvc_project)
    assert tracking.push() >= 2
    assert (dvc_project / ".dvc-remote").is_dir()
    expected = {asset: content_hash(artifacts / asset / "current") for asset in ("toy_data", "toy_model")}
    for asset in expected:
        shutil.rmtree(artifacts / asset / "current")
    shutil.rmtree(dvc_project / ".dvc" / "cache")
    tracking.pull()
    for asset, digest in expected.items():
        assert content_hash(artifacts / asset / "current") == digest
    assert (artifacts / "toy_data" / "current" / "data.txt").read_text() == "to be restored"
    # A fresh clone has `current` after `dvc pull`; the version directory Dagster points to comes back from it.
    version = Path(_metadata(dagster_instance, "toy_model")["artifact_path"].value)
    shutil.rmtree(version)
    assert restore_version(version, expected["toy_model"])
    assert content_hash(version) == expected["toy_model"]
    assert not restore_version(version.parent / "20200101T000000Z-other", "another hash")


def test_tracking_switches(tmp_path, monkeypatch):
    version_dir = tmp_path / "artifacts" / "toy_data" / "20260101T000000Z-abc"
    version_dir.mkdir(parents=True)
    monkeypatch.delenv("RLHF_DVC_ROOT", raising=False)
    monkeypatch.delenv("RLHF_DVC", raising=False)
    assert tracking_for(version_dir) is None  # no dvc.yaml above a test's tmp dir: off
    monkeypatch.setenv("RLHF_DVC", "on")
    with pytest.raises(DvcTrackingError, match="no dvc.yaml"):
        tracking_for(version_dir)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert tracking_for(version_dir).root == tmp_path.resolve()
    nested = tmp_path / "scratch" / "artifacts" / "toy_data" / "20260101T000000Z-abc"
    nested.mkdir(parents=True)
    monkeypatch.setenv("RLHF_DVC", "auto")
    assert tracking_for(nested) is None, "an artifacts root deeper in a DVC project must not touch its stages"
    monkeypatch.setenv("RLHF_DVC", "off")
    assert tracking_for(version_dir) is None
    monkeypatch.setenv("RLHF_DVC", "auto")
    monkeypatch.setenv("RLHF_DVC_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(DvcTrackingError, match="outside the DVC project"):
        tracking_for(version_dir).record("toy_data", version_dir, [])
    monkeypatch.delenv("RLHF_DVC_ROOT")
    # No DVC to run (no $RLHF_DVC_BIN, no .venv-dvc, none on PATH): a warning under auto, an error under on.
    monkeypatch.setenv("RLHF_DVC_BIN", "")
    monkeypatch.setattr("pipeline.storage.dvc.TOOL_VENV", "no-such-venv")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert tracking_for(version_dir) is None
    monkeypatch.setenv("RLHF_DVC", "on")
    with pytest.raises(DvcTrackingError, match="DVC is not installed"):
        tracking_for(version_dir)


def test_parallel_writers_are_serialised(tmp_path):
    """Two steps finishing at once both land in dvc.lock (DVC alone would refuse the second writer)."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    tracking = DvcTracking(tmp_path)
    versions = []
    for asset in ("left", "right"):
        version = tmp_path / "artifacts" / asset / "20260101T000000Z-abc"
        version.mkdir(parents=True)
        (version / "file.txt").write_text(asset)
        versions.append((asset, version))
    errors = []

    def record(asset, version):
        try:
            tracking.record(asset, version, [])
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=record, args=pair) for pair in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert set(_lock(tmp_path)) == {"left", "right"}
    assert tracking.status() == {}


# Another DVC process (a user's `dvc` command), holding DVC's repository lock for a while; run by the
# interpreter of DVC's own environment.
HOLD_DVC_LOCK = """
import sys, time
from dvc.repo import Repo
with Repo() as repo, repo.lock:
    print("locked", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_recording_waits_for_a_dvc_command_holding_the_repository_lock(dvc_project):
    """DVC itself gives up on a taken lock after about 3 s; recording retries until the other command is done."""
    tracking = DvcTracking(dvc_project)
    with tracking.writer_lock():
        tracking.ensure_repo()
    version = dvc_project / "artifacts" / "toy_data" / "20260101T000000Z-abc"
    version.mkdir(parents=True)
    (version / "data.txt").write_text("recorded after the lock is free")
    hold_s = 6.0
    dvc_python = Path(dvc_executable()).parent / "python"
    holder = subprocess.Popen([str(dvc_python), "-c", HOLD_DVC_LOCK, str(hold_s)], cwd=dvc_project,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        record = tracking.record("toy_data", version, [])
        waited = time.monotonic() - started
    finally:
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert waited > hold_s / 2, f"recorded after {waited:.1f}s, while another process held DVC's lock"
    assert record.md5 == _lock(dvc_project)["toy_data"]["outs"][0]["md5"]
    assert "toy_data" not in tracking.status()


def test_a_stage_whose_input_was_never_recorded_is_left_uncommitted(dvc_project, dagster_instance, monkeypatch):
    """DVC cannot commit a stage with a missing dependency: the asset still materializes (without a DVC hash),
    `dvc status` names its stage, and recording the input and the asset again brings DVC up to date."""
    artifacts = dvc_project / "artifacts"
    monkeypatch.setenv("RLHF_DVC", "off")
    materialize_toy(dagster_instance, artifacts, selection=[toy_data])
    monkeypatch.delenv("RLHF_DVC")
    materialize_toy(dagster_instance, artifacts, selection=[toy_model])
    metadata = _metadata(dagster_instance, "toy_model")
    assert "dvc_md5" not in metadata and metadata["dvc_stage"].value == "toy_model"
    assert (artifacts / "toy_model" / "current").is_dir()
    assert "toy_model" in DvcTracking(dvc_project).status()
    materialize_toy(dagster_instance, artifacts)
    assert DvcTracking(dvc_project).status() == {}
    assert _lock(dvc_project)["toy_model"]["outs"][0]["md5"] == _metadata(dagster_instance, "toy_model")["dvc_md5"].value


def test_repository_dvc_yaml_matches_the_asset_graph():
    """dvc.yaml has one stage per asset with the asset's inputs as deps (regenerate: `rlhf dvc-yaml --write dvc.yaml`)."""
    from pipeline.cli import asset_graph_of_definitions
    from pipeline.storage.dvc import stage_spec

    committed = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    graph = asset_graph_of_definitions()
    for asset, upstream in graph.items():
        assert committed.get(asset) == stage_spec(asset, upstream, "artifacts"), (
            f"dvc.yaml stage {asset} differs from the asset graph; run `rlhf dvc-yaml --write dvc.yaml`"
        )
    design_keys = {"base_model", "base_probe", "sft_data", "preference_data", "ppo_prompts", "eval_prompts",
                   "sft_checkpoint", "reward_model", "ppo_policy", "evaluation_report"}
    assert set(committed) <= set(graph) | design_keys
    assert design_keys <= set(committed)


@dg.asset(code_version="1")
def toy_reused(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource) -> dg.Output:
    from pipeline.orchestration.incremental import reuse_if_unchanged

    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    with artifacts.store().stage("toy_reused") as staged:
        (staged.path / "file.txt").write_text("computed once")
    return record_in_dvc(context, artifact_output(context, staged.path, {}))


def test_a_reused_artifact_is_recorded_too(dvc_project, dagster_instance, monkeypatch):
    """An incremental run that reuses an artifact recorded while DVC was off still leaves DVC up to date."""
    resources = {"artifacts": ArtifactStoreResource(root=str(dvc_project / "artifacts")), "io_manager": ArtifactIOManager()}
    monkeypatch.setenv("RLHF_DVC", "off")
    assert dg.materialize([toy_reused], instance=dagster_instance, resources=resources).success
    assert not (dvc_project / "dvc.lock").exists()
    monkeypatch.delenv("RLHF_DVC")
    assert dg.materialize([toy_reused], instance=dagster_instance, resources=resources).success
    metadata = _metadata(dagster_instance, "toy_reused")
    assert metadata["reused_from_run"].value
    assert _lock(dvc_project)["toy_reused"]["outs"][0]["md5"] == metadata["dvc_md5"].value
    status = DvcTracking(dvc_project).status()
    assert "toy_reused" not in status, status
