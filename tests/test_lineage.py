"""Lineage from Dagster input provenance, model cards, leak-check and length-drift questions, `rlhf` CLI.

Uses two toy assets (a data file and a "model" that reads it) that go through the same
`artifact_output` / `record_in_dvc` / `write_model_card` path as the real assets, so these tests take seconds; the
real pipeline twice over is `test_lineage_pipeline.py`.
"""

import json
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from pipeline import cli
from pipeline.orchestration.lineage import LineageError, check_evaluations, length_drift, upstream_tree
from pipeline.orchestration.model_card import write_model_card
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.provenance import config_hash, git_state
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource
from pipeline.storage.contract import MODEL_CARD_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]


class ToyDataConfig(dg.Config):
    text: str = "hello"


class ToyModelConfig(dg.Config):
    learning_rate: float = 0.1


@dg.asset(code_version="1")
def toy_data(context: dg.AssetExecutionContext, config: ToyDataConfig, artifacts: ArtifactStoreResource) -> dg.Output:
    with artifacts.store().stage("toy_data") as staged:
        (staged.path / "data.txt").write_text(config.text)
    return record_in_dvc(context, artifact_output(context, staged.path, {"n_chars": len(config.text)}))


@dg.asset(code_version="1")
def toy_model(
    context: dg.AssetExecutionContext, config: ToyModelConfig, toy_data: Path, artifacts: ArtifactStoreResource
) -> dg.Output:
    with artifacts.store().stage("toy_model") as staged:
        (staged.path / "weights.txt").write_text(f"{config.learning_rate}:{(toy_data / 'data.txt').read_text()}")
        write_model_card(context, staged.path)
    return record_in_dvc(context, artifact_output(context, staged.path, {}))


@dg.asset_check(asset=toy_data, name="eval_prompt_leak")
def toy_leak_check(toy_data: Path) -> dg.AssetCheckResult:
    leaked = "LEAK" in (toy_data / "data.txt").read_text()
    return dg.AssetCheckResult(passed=not leaked, metadata={"n_leaked": int(leaked)})


TOY_ASSETS = [toy_data, toy_model]


def materialize_toy(instance, artifacts_root: Path, text: str = "hello", learning_rate: float = 0.1,
                    selection=None, checks=()):
    result = dg.materialize(
        [*TOY_ASSETS, *checks],
        selection=selection,
        instance=instance,
        run_config={"ops": {name: {"config": value} for name, value in
                            (("toy_data", {"text": text}), ("toy_model", {"learning_rate": learning_rate}))
                            if selection is None or name in {a.key.to_user_string() for a in selection}}},
        resources={"artifacts": ArtifactStoreResource(root=str(artifacts_root)), "io_manager": ArtifactIOManager()},
    )
    assert result.success
    return result.run_id


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    """A DAGSTER_HOME that both the test and the `rlhf` CLI open."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("RLHF_DVC", "off")
    with dg.DagsterInstance.get() as instance:
        yield instance


def test_every_materialization_records_provenance(dagster_home, artifacts_root):
    run_id = materialize_toy(dagster_home, artifacts_root)
    record = dagster_home.fetch_materializations(dg.AssetKey("toy_model"), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    tags = record.event_log_entry.tags
    assert metadata["code_version"].value == "1" == tags["dagster/code_version"]
    assert tags["dagster/data_version"] == metadata["content_hash"].value
    # This tree may gain commits while the test runs (others work in it): check it is a real commit here.
    commit = metadata["git_commit"].value
    assert subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e", f"{commit}^{{commit}}"]).returncode == 0
    assert metadata["git_dirty"].value in (True, False)
    assert metadata["config_hash"].value == config_hash({"learning_rate": 0.1})
    assert metadata["config"].value == {"learning_rate": 0.1}
    upstream = dagster_home.fetch_materializations(dg.AssetKey("toy_data"), limit=1).records[0]
    assert tags["dagster/input_event_pointer/toy_data"] == str(upstream.storage_id)
    # The model card names the exact input materialization and this run.
    card = (Path(metadata["artifact_path"].value) / MODEL_CARD_FILE).read_text()
    assert f"Dagster run `{run_id}`" in card
    assert upstream.run_id in card and upstream.asset_materialization.metadata["content_hash"].value in card


def test_lineage_names_the_input_each_materialization_read(dagster_home, artifacts_root):
    first_run = materialize_toy(dagster_home, artifacts_root, text="first data")
    second_run = materialize_toy(dagster_home, artifacts_root, text="second data")
    # Only the model again, with another config: it reads the second data.
    third_run = materialize_toy(dagster_home, artifacts_root, learning_rate=0.5, selection=[toy_model])

    latest = upstream_tree(dagster_home, "toy_model")
    assert latest.run_id == third_run
    [data] = latest.inputs
    assert data.asset == "toy_data" and data.run_id == second_run
    assert (Path(data.artifact_path) / "data.txt").read_text() == "second data"

    first = upstream_tree(dagster_home, "toy_model", run_id=first_run)
    assert first.inputs[0].run_id == first_run
    assert (Path(first.inputs[0].artifact_path) / "data.txt").read_text() == "first data"
    assert first.config_hash != latest.config_hash
    # Old artifacts are still there, unchanged.
    from pipeline.storage.artifacts import content_hash
    for node in (first, first.inputs[0], latest, data):
        assert node.artifact_exists and content_hash(Path(node.artifact_path)) == node.content_hash

    with pytest.raises(LineageError, match="did not materialize toy_data"):
        upstream_tree(dagster_home, "toy_data", run_id=third_run)
    with pytest.raises(LineageError, match="never been materialized"):
        upstream_tree(dagster_home, "ppo_policy")


def test_cli_lineage_json_and_text(dagster_home, artifacts_root, capsys):
    run_id = materialize_toy(dagster_home, artifacts_root)
    assert cli.main(["lineage", "toy_model", "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["asset"] == "toy_model" and tree["run_id"] == run_id
    node = tree["inputs"][0]
    for field in ("asset", "run_id", "timestamp", "data_version", "artifact_path", "content_hash",
                  "code_version", "git_commit"):
        assert node[field], field
    assert cli.main(["lineage", "toy_model", "--run", run_id]) == 0
    text = capsys.readouterr().out
    assert "toy_model" in text and "└── toy_data" in text and node["content_hash"] in text
    assert cli.main(["lineage", "no_such_asset"]) == 2


def test_leaks_reports_failed_leak_checks_in_a_lineage(dagster_home, artifacts_root, capsys):
    clean_run = materialize_toy(dagster_home, artifacts_root, text="clean", checks=[toy_leak_check])
    clean_tree = upstream_tree(dagster_home, "toy_model")
    materialize_toy(dagster_home, artifacts_root, text="LEAK", checks=[toy_leak_check])

    [latest] = check_evaluations(dagster_home, "leak")
    assert not latest.passed and latest.metadata["n_leaked"] == 1
    [for_clean_model] = check_evaluations(dagster_home, "leak", within=clean_tree)
    assert for_clean_model.passed and for_clean_model.target_run_id == clean_run

    assert cli.main(["leaks"]) == 1
    assert "yes: eval prompts leaked" in capsys.readouterr().out
    assert cli.main(["leaks", "--asset", "toy_model", "--run", clean_run, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["leak_found"] is False and len(answer["evaluations"]) == 1


def _write_metrics(path: Path, lengths) -> Path:
    path.write_text("".join(json.dumps({"step": i, "response_length": n, "reward": 0.0}) + "\n"
                            for i, n in enumerate(lengths)))
    return path


def test_length_drift_finds_the_step_where_responses_stay_longer(tmp_path, capsys):
    # A blip at step 3 that falls back, then a lasting rise from step 7.
    lengths = [10, 10, 10, 20, 10, 10, 10, 14, 16, 18, 20, 22]
    drift = length_drift(_write_metrics(tmp_path / "m.jsonl", lengths), threshold=0.1, window=3)
    assert drift.baseline_length == 10 and drift.n_steps == len(lengths)
    # Trailing mean from step 7 on: (10+10+14)/3 = 11.3 > 11 and rising; steps 3-5 exceed it too but step 6 falls back.
    assert drift.onset_step == 7
    flat = length_drift(_write_metrics(tmp_path / "flat.jsonl", [10, 11, 10, 10, 11]), threshold=0.2)
    assert flat.onset_step is None

    assert cli.main(["length-drift", "--metrics", str(tmp_path / "m.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["onset_step"] == 7
    (tmp_path / "bad.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(LineageError, match="bad.jsonl line 1"):
        length_drift(tmp_path / "bad.jsonl")


def test_git_state_and_config_hash(tmp_path):
    assert git_state(tmp_path).commit == "unknown"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    clean = git_state(tmp_path)
    assert len(clean.commit) == 40 and clean.dirty is False
    (tmp_path / "dvc.lock").write_text("x")  # pipeline bookkeeping does not count
    assert git_state(tmp_path).dirty is False
    (tmp_path / "new_module.py").write_text("x")
    assert git_state(tmp_path).dirty is True
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1}) != config_hash({"a": 2, "b": 2})
    assert config_hash(None) == config_hash({})
