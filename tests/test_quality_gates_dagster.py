"""The gates inside Dagster: a leaked eval prompt stops the trainers, later runs refuse, defaults pass."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline.data import generator as data_generator
from pipeline.data.records import write_jsonl
from pipeline.definitions import defs
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource
from quality_gates.checks import ppo_guard_check, quality_gate_checks, rm_margin_check
from quality_gates.refusal import failed_input_gates

TINY_PROFILE = Path(__file__).resolve().parents[1] / "pipeline" / "profiles" / "tiny.yaml"
TRAINERS = ("sft_checkpoint", "reward_model", "ppo_policy")
DATA_ASSETS = ("sft_data", "preference_data", "ppo_prompts", "eval_prompts")
LEAKED_ROW = 10


def _resources(root: Path) -> dict:
    return {"artifacts": ArtifactStoreResource(root=str(root)), "io_manager": ArtifactIOManager()}


def _run_config(selected: set[str], **data_config) -> dict:
    ops = yaml.safe_load(TINY_PROFILE.read_text())["ops"]
    config = {"ops": {name: cfg for name, cfg in ops.items() if name in selected}}
    for name, extra in data_config.items():
        config["ops"].setdefault(name, {"config": {}})["config"].update(extra)
    return config


def _checks(exclude: tuple[str, ...] = ()) -> list[dg.AssetChecksDefinition]:
    return [c for c in quality_gate_checks(defs.assets) if not {k.name for k in c.check_keys} & set(exclude)]


def _keys(names) -> list[dg.AssetKey]:
    return [dg.AssetKey(n) for n in names]


@pytest.fixture(scope="module")
def leaked_run(tmp_path_factory):
    """One run of everything downstream of the data, with an eval prompt in the user's SFT file."""
    tmp = tmp_path_factory.mktemp("leak")
    eval_prompt = data_generator.prompt_records(16, 0, "eval")[3]["prompt"]
    records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in data_generator.sft_records(40, 0)]
    records.insert(LEAKED_ROW - 1, {"prompt": eval_prompt, "completion": "An answer copied from the eval set."})
    source = tmp / "my_sft.jsonl"
    write_jsonl(records, source)
    all_keys = {key.to_user_string() for a in defs.assets for key in a.keys}
    selected = all_keys - {"base_model", "base_probe"}
    (tmp / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp / "home")) as instance:
        result = dg.materialize(
            [*defs.assets, *_checks(exclude=("expectations",))],  # GE has its own test; it only adds import time
            instance=instance,
            selection=_keys(sorted(selected)),
            run_config=_run_config(selected, sft_data={"source": str(source)}),
            resources=_resources(tmp / "artifacts"),
            raise_on_error=False,
        )
        yield {"result": result, "instance": instance, "eval_prompt": eval_prompt, "tmp": tmp}


def test_leaked_eval_prompt_stops_the_trainers(leaked_run):
    result, instance = leaked_run["result"], leaked_run["instance"]
    assert not result.success
    evaluations = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    leak = evaluations[("sft_data", "eval_leak")]
    assert not leak.passed and leak.severity == dg.AssetCheckSeverity.ERROR
    assert leak.metadata["n_leaked_records"].value == 1
    table = leak.metadata["leaked_rows"].value
    assert leaked_run["eval_prompt"] in table and f"| {LEAKED_ROW} | prompt | exact |" in table
    # The other data passed its gates, and nothing downstream of the leak was trained.
    assert evaluations[("preference_data", "length_bias")].passed
    assert evaluations[("preference_data", "eval_leak")].passed
    for name in DATA_ASSETS:
        assert instance.get_latest_materialization_event(dg.AssetKey(name)) is not None, name
    for name in TRAINERS:
        assert instance.get_latest_materialization_event(dg.AssetKey(name)) is None, name


def test_a_later_run_refuses_to_train_on_the_failed_input_until_it_passes(leaked_run):
    instance, tmp = leaked_run["instance"], leaked_run["tmp"]
    # sft_checkpoint also reads base_model: any existing directory will do, it never gets that far.
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "base_model", metadata={"artifact_path": dg.MetadataValue.path(str(tmp))}
    ))
    checks = _checks(exclude=("expectations",))
    retry = dg.materialize(
        [*defs.assets, *checks], instance=instance, selection=_keys(["sft_checkpoint"]),
        run_config=_run_config({"sft_checkpoint"}), resources=_resources(tmp / "artifacts"), raise_on_error=False,
    )
    assert not retry.success
    [failure] = retry.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert "sft_checkpoint refuses to start" in message and "sft_data:eval_leak" in message
    assert instance.get_latest_materialization_event(dg.AssetKey("sft_checkpoint")) is None

    # Clean data that passes its gates lifts the refusal.
    fixed = dg.materialize(
        [*defs.assets, *checks], instance=instance, selection=_keys(["sft_data"]),
        run_config=_run_config({"sft_data"}), resources=_resources(tmp / "artifacts"),
    )
    assert fixed.success and all(e.passed for e in fixed.get_asset_check_evaluations())
    blocking = {k for c in checks for k in c.check_keys if k.asset_key == dg.AssetKey("sft_data")}
    assert failed_input_gates(instance, {dg.AssetKey("sft_data")}, blocking) == []


def test_default_data_passes_every_data_gate_and_writes_data_docs(artifacts_root, dagster_instance):
    result = dg.materialize(
        [*defs.assets, *quality_gate_checks(defs.assets)],
        instance=dagster_instance,
        selection=_keys(DATA_ASSETS),
        resources=_resources(artifacts_root),
    )
    evaluations = result.get_asset_check_evaluations()
    failed = [(e.asset_key.to_user_string(), e.check_name, e.description) for e in evaluations if not e.passed]
    assert result.success and not failed, failed
    assert {e.check_name for e in evaluations} == {"dedup", "eval_leak", "length_bias", "expectations"}
    docs = [Path(e.metadata["data_docs"].value) for e in evaluations if e.check_name == "expectations"]
    assert len(docs) == 4
    for index in docs:
        assert index.is_file() and index.parent.parent == artifacts_root.resolve() / "data_docs"
        assert "<html" in index.read_text().lower()


def _fake_materialization(instance, name: str, directory: Path) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(
        name, metadata={"artifact_path": dg.MetadataValue.path(str(directory))}
    ))


def _run_check(check, target, instance, root, config=None):
    return dg.materialize(
        [target, check], instance=instance, selection=dg.AssetSelection.checks(check),
        resources=_resources(root), raise_on_error=False,
        run_config={"ops": {check.node_def.name: {"config": config}}} if config else None,
    )


def test_reward_margin_gate_reads_rm_eval(tmp_path, artifacts_root, dagster_instance):
    model_dir = tmp_path / "rm"
    model_dir.mkdir()
    (model_dir / "rm_eval.json").write_text(json.dumps({
        "held_out_accuracy": 0.55, "mean_margin": 0.05, "reward_length_correlation": 0.2, "n_held_out": 60,
        "accuracy_by_failure_mode": {"padded": 0.3, "vague": 0.8},
    }))
    _fake_materialization(dagster_instance, "reward_model", model_dir)
    target = dg.AssetSpec("reward_model")
    result = _run_check(rm_margin_check, target, dagster_instance, artifacts_root)
    [evaluation] = result.get_asset_check_evaluations()
    assert not result.success and not evaluation.passed
    assert "held_out_accuracy=0.550 is below" in evaluation.description
    assert "padded" in evaluation.metadata["accuracy_by_failure_mode"].value
    relaxed = _run_check(rm_margin_check, target, dagster_instance, artifacts_root,
                         {"min_held_out_accuracy": 0.5, "min_mean_margin": 0.0})
    assert relaxed.success and relaxed.get_asset_check_evaluations()[0].passed
    # Ten held-out pairs (the tiny profile) are too few to block on: the failure is a warning.
    thin = _run_check(rm_margin_check, target, dagster_instance, artifacts_root, {"min_held_out_pairs": 61})
    [evaluation] = thin.get_asset_check_evaluations()
    assert thin.success and not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "only 60 held-out pairs" in evaluation.description


def test_ppo_guard_blocks_or_warns_as_configured(tmp_path, artifacts_root, dagster_instance):
    policy_dir = tmp_path / "ppo"
    policy_dir.mkdir()
    (policy_dir / "ppo_summary.json").write_text(json.dumps({"kl_to_sft": 12.0, "kl_bound": 8.0, "response_length_ratio": 1.2, "n_eval_answers": 64}))
    write_jsonl([{"step": 1, "kl": 2.0}, {"step": 2, "kl": 11.0}], policy_dir / "ppo_train_metrics.jsonl")
    _fake_materialization(dagster_instance, "ppo_policy", policy_dir)
    target = dg.AssetSpec("ppo_policy")
    blocked = _run_check(ppo_guard_check, target, dagster_instance, artifacts_root)
    [evaluation] = blocked.get_asset_check_evaluations()
    assert not blocked.success and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "| 2 | 11 |" in evaluation.metadata["steps_beyond_kl_bound"].value
    warned = _run_check(ppo_guard_check, target, dagster_instance, artifacts_root, {"severity": "WARN"})
    [evaluation] = warned.get_asset_check_evaluations()
    assert warned.success and not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN


def test_gates_exist_only_for_defined_assets():
    def names(keys):
        return {f"{k.asset_key.to_user_string()}:{k.name}" for c in quality_gate_checks(keys) for k in c.check_keys}

    assert "ppo_policy:ppo_guard" not in names(["sft_data", "eval_prompts"])
    assert names(["sft_data"]) == {"sft_data:dedup", "sft_data:expectations"}
    assert "ppo_policy:ppo_guard" in names(["ppo_policy"])
    job = defs.resolve_job_def("rlhf_pipeline")
    graph = job.asset_layer.asset_graph
    gate_keys = {key for check in quality_gate_checks(list(defs.assets)) for key in check.check_keys}
    assert gate_keys <= set(graph.asset_check_keys)
    assert all(graph.get(key).blocking for key in gate_keys)


def test_gates_on_unchanged_inputs_reuse_their_verdict_and_a_failure_still_blocks(tmp_path):
    """Same artifact, config and gate code: the last verdict comes back (failing ones too); a change re-evaluates."""
    selected = {"sft_data", "eval_prompts"}
    (tmp_path / "home").mkdir()
    checks = [c for c in _checks() if {k.asset_key.to_user_string() for k in c.check_keys} <= {"sft_data"}]
    assets = [*defs.assets, *checks]

    def run(instance, tags=None, **dedup_config):
        config = _run_config(selected)
        if dedup_config:
            config["ops"]["sft_data_dedup"] = {"config": dedup_config}
        result = dg.materialize(assets, instance=instance, selection=_keys(sorted(selected)),
                                run_config=config, resources=_resources(tmp_path / "artifacts"), tags=tags,
                                raise_on_error=False)
        return result, {e.check_name: e for e in result.get_asset_check_evaluations()}

    def reused_from(evaluation):
        value = evaluation.metadata.get("reused_from_run")
        return value.value if value is not None else None

    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        first, verdicts = run(instance)
        assert first.success and set(verdicts) == {"dedup", "eval_leak", "expectations"}
        assert all(reused_from(v) is None and v.passed for v in verdicts.values())

        again, reused = run(instance)
        assert again.success
        for name, verdict in reused.items():
            assert reused_from(verdict) == first.run_id, name
            assert (verdict.passed, verdict.description) == (verdicts[name].passed, verdicts[name].description)
            assert verdict.metadata["gate_fingerprint"] == verdicts[name].metadata["gate_fingerprint"]

        # Changing one check's config re-evaluates that check only; every record is now a "near duplicate".
        strict, evaluated = run(instance, near_duplicate_threshold=0.01)
        assert not strict.success, "a failing blocking gate fails the run"
        assert reused_from(evaluated["dedup"]) is None and not evaluated["dedup"].passed
        assert reused_from(evaluated["eval_leak"]) == first.run_id

        # The failing verdict, reused, still fails and still blocks the trainer in a later run.
        repeat, still_failing = run(instance, near_duplicate_threshold=0.01)
        assert not repeat.success and not still_failing["dedup"].passed
        assert reused_from(still_failing["dedup"]) == strict.run_id
        assert failed_input_gates(instance, {dg.AssetKey("sft_data")}, {k for c in checks for k in c.check_keys})

        # The recompute tag evaluates again, whatever was recorded.
        forced, recomputed = run(instance, tags={"rlhf/recompute": "all"})
        assert forced.success and all(reused_from(v) is None for v in recomputed.values())
