"""Data assets that clean instead of block: `drop_eval_leaks` / `drop_duplicates` on a multi-turn fixture.

`tests/fixtures/hh_multiturn/` holds HH-RLHF-style dialogues split into train (SFT and preference
data), PPO and eval rows, where the same dialogue prefixes recur across the splits, as they do when a
public multi-turn dataset is split by rows: a training dialogue continues an eval dialogue (13-gram
leak), repeats its context (exact leak) or is its first turn (13-gram leak); a dialogue appears twice
(exact duplicate) or with a word added (near duplicate).

The dropped rows must be exactly what the gates flag (the same functions), the cleaned assets' gates
pass, and lineage and `rlhf leaks` still answer for a model trained on the cleaned data.
"""

import gzip
import json
from pathlib import Path

import dagster as dg
import pytest

from assets.data import SftDataConfig
from pipeline import cli
from pipeline.data.records import read_jsonl
from pipeline.data.sources import load_source
from pipeline.definitions import defs
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource
from pipeline.settings import SourceSettings
from pipeline.storage.contract import DATA_FILE, DROPPED_BY_REASON_KEY, DROPPED_FILE, N_DROPPED_KEY
from quality_gates.checks import quality_gate_checks
from quality_gates.decontamination import drop_flagged_rows
from quality_gates.dedup import DedupSettings, flag_duplicates
from quality_gates.leak import LeakSettings, flag_eval_leaks
from quality_gates.text import TRAINING_TEXT_FIELDS

FIXTURE = Path(__file__).parent / "fixtures" / "hh_multiturn"
# asset -> (fixture file, data kind)
TRAINING_DATA = {"sft_data": ("train", "sft"), "preference_data": ("train", "preference"), "ppo_prompts": ("ppo", "prompts")}
# What the gates flag on the fixture, by asset: {row: reason} (rows of the fixture file, from 1).
EXPECTED_DROPS = {
    "sft_data": {2: "eval_leak", 4: "eval_leak", 7: "exact_duplicate", 9: "eval_leak", 11: "near_duplicate",
                 12: "eval_leak", 18: "eval_leak"},
    "ppo_prompts": {1: "eval_leak", 4: "eval_leak", 5: "exact_duplicate", 9: "eval_leak", 11: "near_duplicate"},
}
EXPECTED_DROPS["preference_data"] = EXPECTED_DROPS["sft_data"]


def _records(asset: str) -> list[dict]:
    name, kind = TRAINING_DATA[asset]
    return load_source(SourceSettings(source=str(FIXTURE / f"{name}.jsonl"), format="hh_rlhf"), kind).records


def _eval_prompts() -> list[str]:
    records = load_source(SourceSettings(source=str(FIXTURE / "eval.jsonl"), format="hh_rlhf"), "prompts").records
    return [r["prompt"] for r in records]


def _flagged_rows(report) -> set[int]:
    return {d["row"] for d in report.exact} | {d["row"] for d in report.near}


# ---------------------------------------------------------------- the shared implementation


@pytest.mark.parametrize("asset", sorted(TRAINING_DATA))
def test_dropped_rows_are_exactly_what_the_gates_flag(asset):
    records, eval_prompts = _records(asset), _eval_prompts()
    candidates = TRAINING_TEXT_FIELDS[asset]
    leaks = flag_eval_leaks(records, candidates, eval_prompts, LeakSettings())
    duplicates = flag_duplicates(records, candidates, DedupSettings())

    # Each option alone drops what its gate flags on the same data, row for row.
    only_leaks = drop_flagged_rows(records, asset, eval_prompts=eval_prompts)
    assert [(d["row"], d["eval_prompt"], d["match"]) for d in only_leaks.dropped] == [
        (leak["row"], leak["eval_prompt"], leak["match"]) for leak in leaks
    ]
    only_duplicates = drop_flagged_rows(records, asset, drop_duplicates=True)
    assert {d["row"] for d in only_duplicates.dropped} == _flagged_rows(duplicates)

    # Both: leaks first, then the duplicates the gate flags among the rows left.
    both = drop_flagged_rows(records, asset, eval_prompts=eval_prompts, drop_duplicates=True)
    assert {d["row"]: d["reason"] for d in both.dropped} == EXPECTED_DROPS[asset]
    leak_free = only_leaks.kept
    leak_free_rows = [row for row in range(1, len(records) + 1) if row not in {leak["row"] for leak in leaks}]
    duplicate_rows = {leak_free_rows[row - 1] for row in _flagged_rows(flag_duplicates(leak_free, candidates, DedupSettings()))}
    assert {d["row"] for d in both.dropped if d["reason"] != "eval_leak"} == duplicate_rows

    # Every dropped row carries its record, and what it matched; kept + dropped is the input.
    for entry in both.dropped:
        assert entry["record"] == records[entry["row"] - 1]
        if entry["reason"] == "eval_leak":
            assert entry["eval_prompt"] in eval_prompts
        else:
            assert entry["duplicate_of"] == records[entry["duplicate_of_row"] - 1]
            assert entry["duplicate_of_row"] < entry["row"] and entry["duplicate_of_row"] not in EXPECTED_DROPS[asset]
    assert sorted([*both.kept, *(d["record"] for d in both.dropped)], key=json.dumps) == sorted(records, key=json.dumps)
    assert both.n_read == len(records) and sum(both.counts().values()) == len(both.dropped)

    # The gates find nothing left.
    assert flag_eval_leaks(both.kept, candidates, eval_prompts, LeakSettings()) == []
    assert _flagged_rows(flag_duplicates(both.kept, candidates, DedupSettings())) == set()


def test_nothing_is_dropped_from_clean_data_and_the_options_default_off():
    records = _records("sft_data")
    kept = [records[i] for i in (0, 2, 4, 5)]
    assert drop_flagged_rows(kept, "sft_data", eval_prompts=_eval_prompts(), drop_duplicates=True).dropped == []
    config = SftDataConfig()
    assert (config.drop_eval_leaks, config.drop_duplicates) == (False, False)


# ---------------------------------------------------------------- through Dagster


class ToyPolicyConfig(dg.Config):
    note: str = "stands in for a policy trained on the three data assets"


@dg.asset(code_version="1")
def toy_policy(context: dg.AssetExecutionContext, config: ToyPolicyConfig, sft_data: Path, preference_data: Path,
               ppo_prompts: Path, artifacts: ArtifactStoreResource) -> dg.Output:
    """A policy stand-in that reads the training data, so lineage and `rlhf leaks` have a model to answer for."""
    with artifacts.store().stage("toy_policy") as staged:
        counts = {name: len(read_jsonl(path / DATA_FILE)) for name, path in
                  (("sft_data", sft_data), ("preference_data", preference_data), ("ppo_prompts", ppo_prompts))}
        (staged.path / "trained_on.json").write_text(json.dumps(counts))
    output = artifact_output(context, staged.path, {"trained_on": dg.MetadataValue.json(counts)})
    return record_in_dvc(context, output)


SELECTED = ("eval_prompts", "sft_data", "preference_data", "ppo_prompts", "toy_policy")


def _run_config(train_source: Path, drop: bool) -> dict:
    ops = {"eval_prompts": {"config": {"source": str(FIXTURE / "eval.jsonl"), "format": "hh_rlhf"}}}
    for asset in TRAINING_DATA:
        source = train_source if TRAINING_DATA[asset][0] == "train" else FIXTURE / "ppo.jsonl"
        ops[asset] = {"config": {"source": str(source), "format": "hh_rlhf", "drop_eval_leaks": drop, "drop_duplicates": drop}}
    return {"ops": ops}


def _materialize(instance, root: Path, run_config: dict, selection=SELECTED):
    checks = [c for c in quality_gate_checks(defs.assets) if "expectations" not in {k.name for k in c.check_keys}]
    return dg.materialize(
        [*defs.assets, toy_policy, *checks], instance=instance, selection=[dg.AssetKey(a) for a in selection],
        run_config={"ops": {op: cfg for op, cfg in run_config["ops"].items() if op in selection}},
        resources={"artifacts": ArtifactStoreResource(root=str(root)), "io_manager": ArtifactIOManager()},
        raise_on_error=False,
    )


def test_data_assets_drop_what_the_gates_flag_and_lineage_and_leaks_still_answer(tmp_path, monkeypatch, capsys):
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("RLHF_DVC", "off")
    root = tmp_path / "artifacts"
    # Public preference data comes as .jsonl.gz: the training split is read compressed.
    train_source = tmp_path / "train.jsonl.gz"
    train_source.write_bytes(gzip.compress((FIXTURE / "train.jsonl").read_bytes()))

    with dg.DagsterInstance.get() as instance:
        # Asked to drop eval leaks with no eval_prompts materialized yet: a clear failure, nothing written.
        early = _materialize(instance, root, _run_config(train_source, drop=True), selection=("sft_data",))
        assert not early.success
        [failure] = early.get_step_failure_events()
        assert "asset eval_prompts has never been materialized" in failure.step_failure_data.user_failure_data.description

        # Defaults: nothing dropped, the gates block, the policy is not trained.
        blocked = _materialize(instance, root, _run_config(train_source, drop=False))
        assert not blocked.success
        failed = {(e.asset_key.to_user_string(), e.check_name) for e in blocked.get_asset_check_evaluations() if not e.passed}
        assert failed == {(asset, gate) for asset in TRAINING_DATA for gate in ("eval_leak", "dedup")}
        assert instance.get_latest_materialization_event(dg.AssetKey("toy_policy")) is None
        sft_blocked = instance.get_latest_materialization_event(dg.AssetKey("sft_data")).asset_materialization
        assert N_DROPPED_KEY not in sft_blocked.metadata
        assert not (Path(sft_blocked.metadata["artifact_path"].value) / DROPPED_FILE).exists()

        # Cleaning: the same rows the gates flagged are dropped, the gates pass, the policy trains.
        cleaned = _materialize(instance, root, _run_config(train_source, drop=True))
        assert cleaned.success
        evaluations = cleaned.get_asset_check_evaluations()
        assert {(e.asset_key.to_user_string(), e.check_name) for e in evaluations} >= failed
        assert all(e.passed for e in evaluations), [(e.asset_key, e.check_name) for e in evaluations if not e.passed]
        eval_prompts = _eval_prompts()
        for asset in TRAINING_DATA:
            materialization = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization
            artifact = Path(materialization.metadata["artifact_path"].value)
            expected = drop_flagged_rows(_records(asset), asset, eval_prompts, drop_duplicates=True)
            dropped = read_jsonl(artifact / DROPPED_FILE)
            assert dropped == json.loads(json.dumps(expected.dropped)), asset
            assert {d["row"]: d["reason"] for d in dropped} == EXPECTED_DROPS[asset]
            assert read_jsonl(artifact / DATA_FILE) == json.loads(json.dumps(expected.kept))
            assert materialization.metadata[N_DROPPED_KEY].value == len(EXPECTED_DROPS[asset])
            assert materialization.metadata["n_records"].value == len(expected.kept)
            assert materialization.metadata[DROPPED_BY_REASON_KEY].value == {
                "rows_read": len(_records(asset)), **expected.counts(), "kept": len(expected.kept),
            }

    capsys.readouterr()
    # The policy's lineage runs through the cleaned data to eval_prompts, the new edge.
    assert cli.main(["lineage", "toy_policy", "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["run_id"] == cleaned.run_id
    data_nodes = {node["asset"]: node for node in tree["inputs"]}
    assert set(data_nodes) == set(TRAINING_DATA)
    for node in data_nodes.values():
        assert node["run_id"] == cleaned.run_id
        assert [child["asset"] for child in node["inputs"]] == ["eval_prompts"]

    # `rlhf leaks` for that policy: the leak gates of its data passed.
    assert cli.main(["leaks", "--asset", "toy_policy", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["leak_found"] is False
    assert {(e["asset"], e["check_name"], e["passed"]) for e in answer["evaluations"]} == {
        (asset, "eval_leak", True) for asset in TRAINING_DATA
    }
    # Without a scope it reads the latest evaluations: the cleaned data's, which passed.
    assert cli.main(["leaks"]) == 0
    assert "no leak found" in capsys.readouterr().out


def test_without_the_options_the_eval_prompts_edge_is_unused_and_reruns_reuse(tmp_path, dagster_instance):
    """sft_data alone, eval_prompts never materialized: it runs, and an unchanged re-run reuses it."""
    config = {"ops": {"sft_data": {"config": {"n_records": 16}}}}
    resources = {"artifacts": ArtifactStoreResource(root=str(tmp_path / "artifacts")), "io_manager": ArtifactIOManager()}
    runs = [dg.materialize(list(defs.assets), selection=[dg.AssetKey("sft_data")], instance=dagster_instance,
                           run_config=config, resources=resources) for _ in range(2)]
    assert all(run.success for run in runs)
    [first, second] = [run.get_asset_materialization_events()[0].materialization.metadata for run in runs]
    assert "reused_from_run" not in first and second["reused_from_run"].value == runs[0].run_id
    assert second["artifact_path"] == first["artifact_path"]
    assert dagster_instance.get_latest_materialization_event(dg.AssetKey("eval_prompts")) is None
