"""`rlhf`: questions about the pipeline's artifacts, answered from the Dagster instance ($DAGSTER_HOME).

    rlhf lineage ppo_policy [--run RUN_ID] [--json]   which reward model / SFT / data made this policy
    rlhf leaks [--asset ppo_policy] [--json]          did any eval prompt appear in training data
    rlhf length-drift [--run RUN_ID] [--json]         from which PPO step responses got longer
    rlhf restore ASSET...                             after `dvc pull`: version dirs back from current/
    rlhf materialize ASSET... [-c run_config.yaml]    materialize some assets (the dvc.yaml stages' command)
    rlhf dvc-yaml [--write]                           dvc.yaml stages generated from the asset graph
    rlhf status [-c run_config.yaml] [--json]         which assets a run would recompute, and why
    rlhf summary [--run RUN_ID | --invocation ID]     what a run did: stages, gates, evaluation, where to look

Each subcommand is a `add_<name>_command(subparsers)` function registering its parser and handler
(`set_defaults(handler=...)`); add new subcommands the same way in `build_parser`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_DAGSTER_HOME = Path(".dagster")


def open_instance():
    """The Dagster instance at $DAGSTER_HOME, else ./.dagster (where the Makefile puts it)."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        if not REPO_DAGSTER_HOME.is_dir():
            raise SystemExit("rlhf: DAGSTER_HOME is not set and there is no .dagster/ here; "
                             "run from the repository root or set DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(REPO_DAGSTER_HOME.resolve())
    return dg.DagsterInstance.get()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str))


def run_lineage(args: argparse.Namespace) -> int:
    from pipeline.orchestration.lineage import render_tree, upstream_tree

    with open_instance() as instance:
        tree = upstream_tree(instance, args.asset, args.run)
    if args.json:
        _print_json(tree.to_dict())
        return 0
    print(render_tree(tree))
    missing = sorted({n.asset for n in _walk(tree) if not n.artifact_exists})
    if missing:
        print(f"\nartifacts missing on disk: {', '.join(missing)} (restore with `dvc pull` or re-materialize)")
    return 0


def _walk(node):
    yield node
    for child in node.inputs:
        yield from _walk(child)


def run_leaks(args: argparse.Namespace) -> int:
    from pipeline.orchestration.lineage import check_evaluations, upstream_tree

    with open_instance() as instance:
        tree = upstream_tree(instance, args.asset, args.run) if args.asset else None
        evaluations = check_evaluations(instance, args.check_name_contains, within=tree)
    failed = [e for e in evaluations if not e.passed]
    if args.json:
        _print_json({"leak_found": bool(failed), "evaluations": [e.to_dict() for e in evaluations]})
    else:
        scope = f"in the lineage of {args.asset}" if args.asset else "on the latest materializations"
        if not evaluations:
            print(f"no recorded evaluation of a check named *{args.check_name_contains}* {scope}")
        for e in evaluations:
            status = "PASSED" if e.passed else "FAILED"
            print(f"{status}  {e.asset}:{e.check_name}  checked run {e.target_run_id}  (evaluated in run {e.run_id}, {e.timestamp})")
            if not e.passed:
                for key, value in e.metadata.items():
                    print(f"    {key}: {value}")
        if evaluations:
            verdict = "yes: eval prompts leaked into training data" if failed else "no leak found"
            print(f"\n{verdict} ({len(failed)} of {len(evaluations)} leak checks failed {scope})")
    return 1 if failed else 0


def run_length_drift(args: argparse.Namespace) -> int:
    from pipeline.orchestration.lineage import artifact_of, length_drift
    from pipeline.storage.contract import PPO_METRICS_FILE

    if args.metrics:
        metrics_path = Path(args.metrics)
    else:
        with open_instance() as instance:
            metrics_path = artifact_of(instance, "ppo_policy", args.run) / PPO_METRICS_FILE
    drift = length_drift(metrics_path, threshold=args.threshold, window=args.window)
    if args.json:
        _print_json(drift.to_dict())
        return 0
    print(f"{drift.n_steps} PPO steps in {drift.metrics_path}")
    print(f"baseline response length {drift.baseline_length:.1f} tokens (first {drift.window} steps), "
          f"final trailing mean {drift.final_length:.1f}")
    if drift.onset_step is None:
        print(f"responses did not get lastingly longer (threshold +{drift.threshold:.0%})")
    else:
        where = f"step {drift.onset_step}" + (f" (checkpoint {drift.onset_checkpoint})" if drift.onset_checkpoint else "")
        print(f"responses got longer from {where} on: trailing mean {drift.onset_length:.1f} tokens, "
              f"above baseline +{drift.threshold:.0%} until the end of training")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from pipeline.orchestration.lineage import materialization_record
    from pipeline.orchestration.materializations import artifact_path_of, content_hash_of
    from pipeline.storage.contract import CURRENT_DIR_NAME
    from pipeline.storage.dvc import restore_version

    failed = 0
    with open_instance() as instance:
        for asset in args.assets:
            record = materialization_record(instance, asset)
            path = artifact_path_of(record)
            if restore_version(path, content_hash_of(record)):
                print(f"{asset}: {path}")
            else:
                failed += 1
                print(f"{asset}: cannot restore {path}: {path.parent / CURRENT_DIR_NAME} does not hold that version "
                      "(`dvc pull` with the dvc.lock of that run, or re-materialize)", file=sys.stderr)
    return 1 if failed else 0


def run_materialize(args: argparse.Namespace) -> int:
    import dagster as dg
    import yaml

    from pipeline.definitions import defs

    selected = set(args.assets)
    run_config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    # A job run limited to some assets rejects config for the others (their checks' ops are `<asset>_<check>`).
    ops = {op: cfg for op, cfg in (run_config or {}).get("ops", {}).items()
           if op in selected or any(op.startswith(f"{asset}_") for asset in selected)}
    job = defs.resolve_job_def(args.job)
    with open_instance() as instance:
        result = job.execute_in_process(
            run_config={**(run_config or {}), "ops": ops}, instance=instance,
            asset_selection=[dg.AssetKey(asset) for asset in args.assets], raise_on_error=False,
        )
    print(f"run {result.run_id}: {'success' if result.success else 'FAILED'}")
    return 0 if result.success else 1


def run_dvc_yaml(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.storage.dvc import dvc_yaml_for_graph

    document = dvc_yaml_for_graph(asset_graph_of_definitions(), args.artifacts_dir)
    text = yaml.safe_dump(document, sort_keys=False)
    if args.write:
        Path(args.write).write_text(text)
        print(f"wrote {args.write} ({len(document['stages'])} stages)")
    else:
        print(text, end="")
    return 0


def asset_graph_of_definitions() -> dict[str, list[str]]:
    """{asset: [assets it reads]} of the `pipeline.definitions` code location, upstream first."""
    from pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = graph.toposorted_asset_keys
    return {
        key.to_user_string(): sorted(parent.to_user_string() for parent in graph.get(key).parent_keys)
        for key in keys
        if graph.get(key).is_materializable
    }


def add_lineage_command(subparsers) -> None:
    parser = subparsers.add_parser("lineage", help="upstream tree of an asset's latest (or a run's) materialization")
    parser.add_argument("asset", help="asset key, e.g. ppo_policy")
    parser.add_argument("--run", metavar="RUN_ID", help="the materialization in this run instead of the latest")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run_lineage)


def add_leaks_command(subparsers) -> None:
    parser = subparsers.add_parser("leaks", help="did any eval prompt appear in training data (recorded leak checks)")
    parser.add_argument("--asset", help="only checks on materializations in this asset's lineage (e.g. ppo_policy)")
    parser.add_argument("--run", metavar="RUN_ID", help="with --asset: that asset's materialization in this run")
    parser.add_argument("--check-name-contains", default="leak", help="which checks count (default: 'leak')")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_leaks)


def add_length_drift_command(subparsers) -> None:
    parser = subparsers.add_parser("length-drift", help="from which PPO step responses started getting longer")
    parser.add_argument("--run", metavar="RUN_ID", help="ppo_policy of this run instead of the latest")
    parser.add_argument("--metrics", help="a ppo_train_metrics.jsonl file instead of the policy's")
    parser.add_argument("--threshold", type=float, default=0.1, help="relative rise over the baseline (default 0.1)")
    parser.add_argument("--window", type=int, default=3, help="steps in the trailing mean and the baseline (default 3)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_length_drift)


def add_restore_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "restore", help="after `dvc pull`: re-create the latest materializations' version directories from current/"
    )
    parser.add_argument("assets", nargs="+", help="asset keys")
    parser.set_defaults(handler=run_restore)


def add_materialize_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "materialize", help="materialize some assets of the job (what a dvc.yaml stage runs under `dvc repro`)"
    )
    parser.add_argument("assets", nargs="+", help="asset keys")
    parser.add_argument("-c", "--config", metavar="RUN_CONFIG", help="run-config YAML (entries for other assets are ignored)")
    parser.add_argument("--job", default="rlhf_pipeline")
    parser.set_defaults(handler=run_materialize)


def add_dvc_yaml_command(subparsers) -> None:
    parser = subparsers.add_parser("dvc-yaml", help="dvc.yaml with one stage per asset, from the asset graph")
    parser.add_argument("--write", metavar="PATH", help="write it to PATH (e.g. dvc.yaml) instead of printing")
    parser.add_argument("--artifacts-dir", default="artifacts", help="artifacts root relative to the DVC root")
    parser.set_defaults(handler=run_dvc_yaml)


def run_status(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.definitions import defs
    from pipeline.orchestration.incremental import render_status, stale_assets

    run_config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    job = defs.resolve_job_def(args.job)
    with open_instance() as instance:
        results = stale_assets(instance, job, run_config or {}, verify_artifacts=not args.no_verify)
    if args.json:
        _print_json({"run_config": args.config or "default profile", "assets": [r.to_dict() for r in results]})
    else:
        print(f"against {args.config or 'the default profile (no run config)'}:\n")
        print(render_status(results))
    return 0


def add_status_command(subparsers) -> None:
    parser = subparsers.add_parser("status", help="which assets a run would recompute (stale), and why")
    parser.add_argument("-c", "--config", metavar="RUN_CONFIG",
                        help="run-config YAML to compare configs with (default: the default profile)")
    parser.add_argument("--job", default="rlhf_pipeline", help="job whose assets to list (default rlhf_pipeline)")
    parser.add_argument("--no-verify", action="store_true", help="skip re-hashing artifacts on disk")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_status)


def run_summary(args: argparse.Namespace) -> int:
    from pipeline.orchestration.run_summary import find_run, render_summary, summarize_run

    with open_instance() as instance:
        run = find_run(instance, args.run, args.invocation)
        if run is None:
            print("rlhf summary: no run found" + (f" tagged with invocation {args.invocation}" if args.invocation else "")
                  + " (did the job start? see the lines above)", file=sys.stderr)
            return 2
        summary = summarize_run(instance, run)
    if args.json:
        _print_json(summary.to_dict())
    else:
        bin_dir = Path(sys.executable).parent  # where `rlhf` is, as the user would type it from here
        print(render_summary(summary, os.path.relpath(bin_dir) if bin_dir.is_relative_to(Path.cwd()) else str(bin_dir)))
    return 0 if summary.succeeded else 1


def add_summary_command(subparsers) -> None:
    parser = subparsers.add_parser("summary", help="what a run did: stages computed or reused, gates, evaluation headline")
    parser.add_argument("--run", metavar="RUN_ID", help="this run (default: the latest run of rlhf_pipeline)")
    parser.add_argument("--invocation", metavar="ID", help="the run tagged rlhf/invocation=ID (what `make run` sets)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_lineage_command(subparsers)
    add_leaks_command(subparsers)
    add_length_drift_command(subparsers)
    add_restore_command(subparsers)
    add_materialize_command(subparsers)
    add_dvc_yaml_command(subparsers)
    add_status_command(subparsers)
    add_summary_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.orchestration.lineage import LineageError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except LineageError as error:
        print(f"rlhf {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
