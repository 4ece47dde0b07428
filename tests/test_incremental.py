"""Incremental re-runs: unchanged stages reuse their artifact, a change recomputes that stage and what is downstream.

One Dagster instance and artifacts root for the module, four runs of the whole graph on the tiny
profile, in order (each compared with the state the previous one left):

1. first run: everything computed;
2. nothing changed: everything reused (same paths, same data versions, `reused_from_run`);
3. only the PPO config changed: only `ppo_policy` and `evaluation_report` recomputed;
4. the preference generator's seed changed: the data and everything downstream of it recomputed.
"""

import copy
import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline import cli
from pipeline.definitions import defs
from pipeline.orchestration.incremental import RECOMPUTE_TAG, config_changes, recompute_requested, staleness
from pipeline.storage.contract import REUSED_FROM_RUN_KEY
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource

TINY_PROFILE = Path(__file__).resolve().parents[1] / "pipeline" / "profiles" / "tiny.yaml"
PPO_CHANGE = {"ppo_epochs": 2}
SEED_CHANGE = {"seed": 7}


def and_downstream(asset: str) -> set[str]:
    """The asset and every asset downstream of it in the job (preference_data -> reward_model -> ppo_policy -> ...)."""
    graph = defs.resolve_asset_graph()
    found, frontier = {dg.AssetKey(asset)}, [dg.AssetKey(asset)]
    while frontier:
        for child in graph.get(frontier.pop()).child_keys:
            if child not in found and graph.get(child).is_materializable:
                found.add(child)
                frontier.append(child)
    return {key.to_user_string() for key in found}


def _op_config(run_config: dict, asset: str) -> dict:
    return run_config.setdefault("ops", {}).setdefault(asset, {}).setdefault("config", {})


def _outcome(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Per asset materialized in the run: reused_from_run (None: computed), artifact path, data version."""
    outcome = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        key = materialization.asset_key
        record = instance.fetch_materializations(key, limit=1).records[0]
        reused = materialization.metadata.get(REUSED_FROM_RUN_KEY)
        outcome[key.to_user_string()] = {
            "reused_from_run": reused.value if reused is not None else None,
            "has_lineage_keys": {"content_hash", "code_version", "config_hash"} <= set(materialization.metadata),
            "artifact_path": materialization.metadata["artifact_path"].value,
            "data_version": record.event_log_entry.tags["dagster/data_version"],
        }
    return outcome


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """The four runs, their configs and outcomes, on one instance (DAGSTER_HOME for `rlhf status`)."""
    root = tmp_path_factory.mktemp("incremental")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    resources = {"artifacts": ArtifactStoreResource(root=str(root / "artifacts")), "io_manager": ArtifactIOManager()}
    assets = list(defs.assets)  # assets only: the quality gates are tested elsewhere
    assert "ppo_policy" in {a.key.to_user_string() for a in assets}

    baseline = yaml.safe_load(TINY_PROFILE.read_text())
    ppo_changed = copy.deepcopy(baseline)
    _op_config(ppo_changed, "ppo_policy").update(PPO_CHANGE)
    seed_changed = copy.deepcopy(ppo_changed)
    _op_config(seed_changed, "preference_data").update(SEED_CHANGE)

    runs = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for name, run_config in (
            ("first", baseline), ("unchanged", baseline), ("ppo_changed", ppo_changed), ("seed_changed", seed_changed),
        ):
            result = dg.materialize(assets, instance=instance, run_config=run_config, resources=resources)
            assert result.success, name
            runs[name] = {"run_id": result.run_id, "outcome": _outcome(instance, result), "config": run_config}
        dagster_stale = _dagster_stale_assets(instance, assets)
    return {"home": home, "root": root, "runs": runs, "dagster_stale_after_last_run": dagster_stale}


def _dagster_stale_assets(instance: dg.DagsterInstance, assets) -> set[str]:
    """What Dagster's own staleness (the web UI's) calls stale: code versions + data versions."""
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    resolver = get_stale_status_resolver(instance, assets)
    return {a.key.to_user_string() for a in assets if resolver.get_status(a.key) != StaleStatus.FRESH}


def _computed(outcome: dict[str, dict]) -> set[str]:
    return {asset for asset, o in outcome.items() if o["reused_from_run"] is None}


def test_first_run_computes_everything(history):
    first = history["runs"]["first"]["outcome"]
    assert len(first) == len(defs.assets)
    assert _computed(first) == set(first)


def test_unchanged_rerun_recomputes_nothing(history):
    first, again = history["runs"]["first"], history["runs"]["unchanged"]
    assert _computed(again["outcome"]) == set()
    for asset, outcome in again["outcome"].items():
        before = first["outcome"][asset]
        assert outcome["reused_from_run"] == first["run_id"], asset
        assert outcome["artifact_path"] == before["artifact_path"], asset
        assert outcome["data_version"] == before["data_version"], asset  # so downstream is not stale
        assert outcome["has_lineage_keys"], asset  # lineage and loading read the reused metadata


def test_ppo_config_change_recomputes_only_ppo_and_evaluation(history):
    runs = history["runs"]
    outcome = runs["ppo_changed"]["outcome"]
    assert _computed(outcome) == and_downstream("ppo_policy")  # ppo_policy, evaluation_report
    for asset in set(outcome) - and_downstream("ppo_policy"):
        assert outcome[asset]["reused_from_run"] == runs["first"]["run_id"], asset
        assert outcome[asset]["artifact_path"] == runs["first"]["outcome"][asset]["artifact_path"]
    assert outcome["ppo_policy"]["artifact_path"] != runs["first"]["outcome"]["ppo_policy"]["artifact_path"]


def test_seed_change_recomputes_the_data_and_everything_downstream(history):
    runs = history["runs"]
    outcome = runs["seed_changed"]["outcome"]
    assert _computed(outcome) == and_downstream("preference_data")
    assert {"reward_model", "ppo_policy"} <= _computed(outcome)
    assert outcome["preference_data"]["data_version"] != runs["first"]["outcome"]["preference_data"]["data_version"]
    for asset in ("base_model", "sft_data", "sft_checkpoint", "ppo_prompts", "eval_prompts", "base_probe"):
        assert outcome[asset]["reused_from_run"] == runs["first"]["run_id"], asset
    # Dagster's own staleness agrees: after the run nothing is stale.
    assert history["dagster_stale_after_last_run"] == set()


def _status(history, monkeypatch, capsys, *args: str) -> dict[str, dict]:
    monkeypatch.setenv("DAGSTER_HOME", str(history["home"]))
    assert cli.main(["status", "--json", *args]) == 0
    return {entry["asset"]: entry for entry in json.loads(capsys.readouterr().out)["assets"]}


def test_status_lists_stale_assets_and_why(history, monkeypatch, capsys, tmp_path):
    last_config = tmp_path / "last.yaml"
    last_config.write_text(yaml.safe_dump(history["runs"]["seed_changed"]["config"]))
    assert not any(entry["stale"] for entry in _status(history, monkeypatch, capsys, "-c", str(last_config)).values())

    # Against the tiny profile, the PPO config and the preference seed differ from what was last run.
    status = _status(history, monkeypatch, capsys, "-c", str(TINY_PROFILE))
    stale = {asset for asset, entry in status.items() if entry["stale"]}
    assert stale == and_downstream("preference_data") | and_downstream("ppo_policy")
    assert any("config changed (seed: 7 -> 0)" in reason for reason in status["preference_data"]["reasons"])
    assert any(reason.startswith("config changed (ppo_epochs: 2 -> 1") for reason in status["ppo_policy"]["reasons"])
    assert status["reward_model"]["reasons"] == ["upstream stale: preference_data"]

    # Text output names the reasons too.
    monkeypatch.setenv("DAGSTER_HOME", str(history["home"]))
    assert cli.main(["status", "-c", str(TINY_PROFILE)]) == 0
    text = capsys.readouterr().out
    assert "ppo_policy" in text and "STALE" in text and f"{len(stale)} of {len(status)} assets stale" in text


def test_status_on_an_empty_instance_says_never_materialized(monkeypatch, capsys, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert cli.main(["status", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)["assets"]
    assert entries and all(entry["reasons"] == ["never materialized"] for entry in entries)


def test_an_artifact_changed_on_disk_or_missing_is_stale(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "data.jsonl").write_text('{"prompt": "x"}\n')
    from pipeline.storage.artifacts import content_hash
    from pipeline.orchestration.provenance import config_hash

    with dg.instance_for_test(temp_dir=str(home)) as instance:
        key = dg.AssetKey("eval_prompts")
        instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={
            "artifact_path": dg.MetadataValue.path(str(artifact)), "content_hash": content_hash(artifact),
            "config_hash": config_hash({}),
        }))
        assert staleness(instance, key, "1", {}, []).reasons == ["code version changed: None -> 1"]
        (artifact / "data.jsonl").write_text('{"prompt": "y"}\n')
        reasons = staleness(instance, key, "1", {}, []).reasons
        assert any("changed on disk" in reason for reason in reasons)
        (artifact / "data.jsonl").unlink()
        artifact.rmdir()
        assert any("artifact missing" in reason for reason in staleness(instance, key, "1", {}, []).reasons)


def test_recompute_tag_and_config_changes():
    assert recompute_requested({RECOMPUTE_TAG: "all"}, "sft_data")
    assert recompute_requested({RECOMPUTE_TAG: "ppo_policy, evaluation_report"}, "ppo_policy")
    assert not recompute_requested({RECOMPUTE_TAG: "ppo_policy"}, "sft_data")
    assert not recompute_requested({}, "sft_data")
    assert config_changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b: 2 -> 3", "c: '<unset>' -> 4"]
