"""The real pipeline twice (tiny profile), the second time with only the reward-model config changed.

The policy's lineage must name the reward model it was trained with, run by run; old artifacts
survive with their recorded hashes; DVC's dvc.lock agrees with Dagster's metadata. The leaf is
`ppo_policy` when it is defined, else `reward_model`.
"""

import json
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline import cli
from pipeline.storage.artifacts import content_hash
from pipeline.cli import asset_graph_of_definitions
from pipeline.definitions import defs
from pipeline.storage.dvc import DvcTracking, dvc_yaml_for_graph
from pipeline.orchestration.lineage import upstream_tree
from pipeline.storage.contract import MODEL_CARD_FILE
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource

pytestmark = pytest.mark.slow

SMALLER = {
    "base_model": {"pretrain_steps": 5},
    "sft_data": {"n_records": 32},
    "preference_data": {"n_records": 32},
    "ppo_prompts": {"n_records": 8},
    "sft_checkpoint": {"n_format_samples": 1, "max_new_tokens": 4},
}


def _upstream_closure(graph: dict[str, list[str]], leaf: str) -> set[str]:
    selected, frontier = set(), [leaf]
    while frontier:
        asset = frontier.pop()
        if asset not in selected:
            selected.add(asset)
            frontier.extend(graph[asset])
    return selected


def _metadata(instance, asset: str):
    return instance.fetch_materializations(dg.AssetKey(asset), limit=1).records[0].asset_materialization.metadata


def test_policy_lineage_names_the_reward_model_it_was_trained_with(tmp_path, monkeypatch, tiny_run_config, capsys):
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    graph = asset_graph_of_definitions()
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml_for_graph(graph), sort_keys=False))
    artifacts = project / "artifacts"
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("RLHF_DVC", raising=False)
    monkeypatch.delenv("RLHF_DVC_ROOT", raising=False)

    leaf = "ppo_policy" if "ppo_policy" in graph else "reward_model"
    selected = _upstream_closure(graph, leaf)
    assets = [a for a in defs.assets if any(k.to_user_string() in selected for k in a.keys)]
    resources = {"artifacts": ArtifactStoreResource(root=str(artifacts)), "io_manager": ArtifactIOManager()}

    # Smaller still than the tiny profile: lineage needs materializations, not model quality.
    for op, overrides in SMALLER.items():
        tiny_run_config["ops"].setdefault(op, {"config": {}})["config"].update(overrides)

    def run(selection: set[str], rm_learning_rate: float) -> str:
        config = {"ops": {op: cfg for op, cfg in tiny_run_config["ops"].items() if op in selection}}
        config["ops"].setdefault("reward_model", {"config": {}})
        config["ops"]["reward_model"]["config"] = {**config["ops"]["reward_model"].get("config", {}),
                                                   "learning_rate": rm_learning_rate}
        with dg.DagsterInstance.get() as instance:
            result = dg.materialize(assets, selection=[dg.AssetKey(a) for a in sorted(selection)], instance=instance,
                                    run_config=config, resources=resources)
        assert result.success
        return result.run_id

    first_run = run(selected, rm_learning_rate=5e-4)
    downstream_of_rm = {a for a in selected if "reward_model" in _upstream_closure(graph, a)}
    second_run = run(downstream_of_rm, rm_learning_rate=1e-3)

    with dg.DagsterInstance.get() as instance:
        first = upstream_tree(instance, leaf, run_id=first_run)
        second = upstream_tree(instance, leaf)
        [rm_first] = first.find("reward_model")
        [rm_second] = second.find("reward_model")
        assert rm_first.run_id == first_run and rm_second.run_id == second_run
        assert rm_first.config_hash != rm_second.config_hash
        # Everything upstream of the reward model is the first run's, in both lineages.
        [sft_first], [sft_second] = first.find("sft_checkpoint"), second.find("sft_checkpoint")
        assert sft_first.run_id == sft_second.run_id == first_run
        for node in (rm_first, rm_second, first, second):
            assert node.artifact_exists and content_hash(Path(node.artifact_path)) == node.content_hash
            assert node.git_commit and node.code_version == defs.resolve_assets_def(node.asset).code_versions_by_key[dg.AssetKey(node.asset)]

        # The reward model's card names the SFT checkpoint and preference data it was trained from.
        card = (Path(rm_second.artifact_path) / MODEL_CARD_FILE).read_text()
        assert second_run in card and sft_first.content_hash in card
        [preference] = second.find("preference_data")
        assert preference.run_id in card

        # dvc.lock holds the hashes Dagster recorded; the stages run this time are up to date.
        lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
        assert lock["reward_model"]["outs"][0]["md5"] == rm_second.dvc_md5 == _metadata(instance, "reward_model")["dvc_md5"].value
        if leaf == "ppo_policy":
            rm_dep = next(d for d in lock["ppo_policy"]["deps"] if d["path"].startswith("artifacts/reward_model/"))
            assert rm_dep["md5"] == rm_second.dvc_md5
        status = DvcTracking(project).status()
        assert not set(status) & selected, status

    capsys.readouterr()  # drop the runs' log output
    assert cli.main(["lineage", leaf, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    named = [n for n in _walk(answer) if n["asset"] == "reward_model"]
    assert {(n["run_id"], n["content_hash"], n["dvc_md5"]) for n in named} == {
        (second_run, rm_second.content_hash, rm_second.dvc_md5)
    }


def _walk(node: dict):
    yield node
    for child in node["inputs"]:
        yield from _walk(child)
