"""Pipeline benchmark: orchestration overhead, incremental re-runs, and SFT / RM against plain TRL.

    .venv/bin/python benchmarks/bench_pipeline.py                       # default profile, both executors
    .venv/bin/python benchmarks/bench_pipeline.py --profile pipeline/profiles/tiny.yaml --executors in_process

For each executor, on a fresh Dagster instance and artifacts root, through `dagster job execute`
(what `make run` does):

1. a full run: wall time of the command, and the sum of the steps' own compute (STEP_START to
   STEP_SUCCESS in the event log; process start-up and imports fall outside it), and their ratio
   (orchestration overhead; target <= 1.10);
2. the same run again, nothing changed (target: <= 10% of the full run);
3. a run with only the PPO config changed (its `seed`), against the compute of the `ppo_policy`
   and `evaluation_report` steps in that run (target <= 1.1x).

Then (4) SFT and the reward model as plain TRL scripts (same base model, data split, chat
formatting, hyperparameters and held-out evaluation, no Dagster), against the `sft_checkpoint` and
`reward_model` steps of the first full run (target <= 1.05x).

Prints a markdown table and writes benchmarks/results/pipeline-<executor list>.json. The machine
this runs on may be shared: each row is one measurement, so compare with care.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DAGSTER_BIN = Path(sys.executable).with_name("dagster")
EXECUTORS = {
    "in_process": {"in_process": {}},
    "multiprocess": {"multiprocess": {}},
    # One forkserver imports the code location once; each step forks from it.
    "forkserver": {"multiprocess": {"start_method": {"forkserver": {"preload_modules": ["pipeline.definitions"]}}}},
}
PPO_ONLY_CHANGE = {"seed": 1}


def run_config_for(profile: dict[str, Any], executor: str, ppo_change: dict[str, Any] | None = None) -> dict[str, Any]:
    config = copy.deepcopy(profile)
    config["execution"] = {"config": EXECUTORS[executor]}
    if ppo_change:
        ops = config.setdefault("ops", {})
        ops.setdefault("ppo_policy", {}).setdefault("config", {}).update(ppo_change)
    return config


def snapshot_code(workdir: Path) -> Path:
    """A copy of the working tree's code (tracked and untracked, not ignored files) that every run uses.

    The runs of one benchmark then see the same code even while the tree is being edited, so a
    re-run is not made stale by someone else's change landing between two runs.
    """
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout
    code_dir = workdir / "code"
    for name in filter(None, listing.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (code_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, code_dir / name)
    return code_dir


def execute_job(
    code_dir: Path, home: Path, artifacts_root: Path, run_config: dict[str, Any], label: str
) -> dict[str, Any]:
    """Run `dagster job execute` once; its wall time, and per-step compute and reuse from the event log."""
    config_path = home / f"{label}.yaml"
    config_path.write_text(yaml.safe_dump(run_config))
    env = {**os.environ, "DAGSTER_HOME": str(home), "RLHF_ARTIFACTS_ROOT": str(artifacts_root), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(code_dir)}  # ahead of the editable install's path to the live tree
    command = [str(DAGSTER_BIN), "job", "execute", "-m", "pipeline.definitions", "-j", "rlhf_pipeline", "-c", str(config_path)]
    print(f"[{label}] {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=code_dir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (home / f"{label}.log").write_text(completed.stdout + completed.stderr)
    timing = run_timing(home)
    timing.update({"label": label, "wall_seconds": wall, "exit_code": completed.returncode, "log": str(home / f"{label}.log")})
    print(f"[{label}] {wall:.1f} s wall, {timing['steps_compute_seconds']:.1f} s step compute, "
          f"computed: {', '.join(timing['computed']) or 'nothing'}", flush=True)
    if completed.returncode != 0:
        print(f"[{label}] FAILED (exit {completed.returncode}); see {home / f'{label}.log'}", flush=True)
    return timing


def run_timing(home: Path, run_id: str | None = None) -> dict[str, Any]:
    """A run's (default: the latest's) step durations, run duration, and which assets it computed or reused."""
    import dagster as dg

    from pipeline.storage.contract import REUSED_FROM_RUN_KEY

    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id) if run_id else instance.get_runs(limit=1)[0]
        stats = instance.get_run_stats(run.run_id)
        starts: dict[str, float] = {}
        steps: dict[str, float] = {}
        computed, reused = [], []
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                starts[entry.step_key] = entry.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                steps[entry.step_key] = entry.timestamp - starts.get(entry.step_key, entry.timestamp)
            elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.event_specific_data.materialization
                name = materialization.asset_key.to_user_string()
                (reused if REUSED_FROM_RUN_KEY in materialization.metadata else computed).append(name)
    return {
        "run_id": run.run_id,
        "status": run.status.value,
        "run_seconds": (stats.end_time or 0) - (stats.start_time or 0),
        "steps_compute_seconds": sum(steps.values()),
        "step_seconds": dict(sorted(steps.items(), key=lambda item: -item[1])),
        "computed": computed,
        "reused": reused,
    }


def artifact_of(home: Path, asset: str) -> Path:
    import dagster as dg

    from pipeline.orchestration.materializations import artifact_path_of, latest_materialization

    with dg.DagsterInstance.from_config(str(home)) as instance:
        return artifact_path_of(latest_materialization(instance, asset))


def benchmark_executor(profile: dict[str, Any], executor: str, workdir: Path, code_dir: Path) -> dict[str, Any]:
    home, artifacts_root = workdir / executor / "dagster_home", workdir / executor / "artifacts"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO_ROOT / ".dagster" / "dagster.yaml").read_text())
    full = execute_job(code_dir, home, artifacts_root, run_config_for(profile, executor), f"{executor}-full")
    unchanged = execute_job(code_dir, home, artifacts_root, run_config_for(profile, executor), f"{executor}-unchanged")
    ppo = execute_job(code_dir, home, artifacts_root, run_config_for(profile, executor, PPO_ONLY_CHANGE),
                      f"{executor}-ppo-only")
    ppo_eval_compute = sum(ppo["step_seconds"].get(step, 0.0) for step in ("ppo_policy", "evaluation_report"))
    return {
        "executor": executor,
        "full": full,
        "unchanged": unchanged,
        "ppo_only": ppo,
        "overhead_ratio": full["wall_seconds"] / full["steps_compute_seconds"] if full["steps_compute_seconds"] else None,
        "unchanged_fraction_of_full": unchanged["wall_seconds"] / full["wall_seconds"],
        "ppo_only_vs_ppo_eval_compute": ppo["wall_seconds"] / ppo_eval_compute if ppo_eval_compute else None,
        "ppo_eval_compute_seconds": ppo_eval_compute,
        "home": str(home),
    }


# --- plain TRL -------------------------------------------------------------------------------


def _settings(profile: dict[str, Any], op: str, settings_class):
    return settings_class(**((profile.get("ops") or {}).get(op, {}).get("config") or {}))


def plain_trl_sft(base_dir: Path, sft_data_dir: Path, profile: dict[str, Any], out_dir: Path) -> dict[str, float]:
    """SFT with TRL alone: the stage's data split, formatting, config, held-out evaluation and format samples."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from pipeline.data.records import load_data
    from pipeline.data.records import split_held_out
    from pipeline.settings import SftSettings
    from pipeline.training.chat_format import render_prompt
    from pipeline.training.generation import generate

    settings = _settings(profile, "sft_checkpoint", SftSettings)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    train, held_out = split_held_out(load_data(sft_data_dir), settings.held_out_fraction, settings.seed)

    def dataset(records):
        return Dataset.from_dict({"prompt": [render_prompt(tokenizer, r["prompt"]) for r in records],
                                  "completion": [r["completion"] for r in records]})

    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch, learning_rate=settings.learning_rate, num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
            max_length=settings.max_length, completion_only_loss=True, packing=False,
            warmup_steps=settings.warmup_ratio, weight_decay=settings.weight_decay, lr_scheduler_type="cosine",
            logging_steps=5, eval_strategy="no", save_strategy="no", report_to="none", seed=settings.seed,
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset(train), eval_dataset=dataset(held_out),
                             processing_class=tokenizer)
        trainer.evaluate()
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started
        trainer.evaluate()
    trainer.model.eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    generate(trainer.model, tokenizer, [r["prompt"] for r in held_out[: settings.n_format_samples]],
             max_new_tokens=settings.max_new_tokens)
    return {"total_seconds": time.perf_counter() - started, "train_seconds": train_seconds}


def plain_trl_reward(sft_dir: Path, preference_dir: Path, profile: dict[str, Any], out_dir: Path) -> dict[str, float]:
    """The reward model with TRL alone: same split, formatting, config, and held-out scoring."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from pipeline.data.records import load_data
    from pipeline.data.records import split_held_out
    from pipeline.settings import RewardSettings
    from pipeline.training.chat_format import render_prompt
    from pipeline.training.reward_model import score

    settings = _settings(profile, "reward_model", RewardSettings)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    train, held_out = split_held_out(load_data(preference_dir), settings.held_out_fraction, settings.seed)
    dataset = Dataset.from_dict({"prompt": [render_prompt(tokenizer, p["prompt"]) for p in train],
                                 "chosen": [p["chosen"] for p in train], "rejected": [p["rejected"] for p in train]})
    with tempfile.TemporaryDirectory() as scratch:
        args = RewardConfig(
            output_dir=scratch, learning_rate=settings.learning_rate, num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size, max_length=settings.max_length,
            warmup_steps=settings.warmup_ratio, lr_scheduler_type="cosine",
            center_rewards_coefficient=settings.center_rewards_coefficient or None, logging_steps=5,
            save_strategy="no", eval_strategy="no", report_to="none", seed=settings.seed,
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started
    model = trainer.model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    prompts = [p["prompt"] for p in held_out]
    for side in ("chosen", "rejected"):
        score(model, tokenizer, prompts, [p[side] for p in held_out], max_length=settings.max_length)
    return {"total_seconds": time.perf_counter() - started, "train_seconds": train_seconds}


def full_run_of(home: Path) -> dict[str, Any]:
    """The latest run of an existing instance, shaped like `benchmark_executor`'s result."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
    for run in runs:  # newest first: the latest run that computed SFT and the reward model
        timing = run_timing(home, run.run_id)
        if {"sft_checkpoint", "reward_model"} <= set(timing["computed"]):
            return {"home": str(home), "full": timing}
    raise SystemExit(f"no run in {home} computed sft_checkpoint and reward_model")


def benchmark_plain_trl(profile: dict[str, Any], first: dict[str, Any], workdir: Path) -> dict[str, Any]:
    home = Path(first["home"])
    steps = first["full"]["step_seconds"]
    sft = plain_trl_sft(artifact_of(home, "base_model"), artifact_of(home, "sft_data"), profile, workdir / "plain-sft")
    print(f"[plain TRL] SFT {sft['total_seconds']:.1f} s (stage: {steps.get('sft_checkpoint', 0):.1f} s)", flush=True)
    rm = plain_trl_reward(artifact_of(home, "sft_checkpoint"), artifact_of(home, "preference_data"), profile,
                          workdir / "plain-rm")
    print(f"[plain TRL] RM {rm['total_seconds']:.1f} s (stage: {steps.get('reward_model', 0):.1f} s)", flush=True)
    return {
        "sft": {"plain": sft, "stage_seconds": steps.get("sft_checkpoint"),
                "ratio": steps.get("sft_checkpoint", 0) / sft["total_seconds"]},
        "reward_model": {"plain": rm, "stage_seconds": steps.get("reward_model"),
                         "ratio": steps.get("reward_model", 0) / rm["total_seconds"]},
    }


# --- report ----------------------------------------------------------------------------------


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def report_table(results: dict[str, Any]) -> str:
    rows = ["| measurement | " + " | ".join(r["executor"] for r in results["executors"]) + " | target |",
            "|---|" + "---|" * len(results["executors"]) + "---|"]

    def row(name: str, values: list[str], target: str) -> None:
        rows.append(f"| {name} | " + " | ".join(values) + f" | {target} |")

    runs = results["executors"]
    row("full run: wall (s)", [_fmt(r["full"]["wall_seconds"], "{:.1f}") for r in runs], "")
    row("full run: sum of step compute (s)", [_fmt(r["full"]["steps_compute_seconds"], "{:.1f}") for r in runs], "")
    row("orchestration overhead (wall / compute)", [_fmt(r["overhead_ratio"]) for r in runs], "<= 1.10")
    row("no-change re-run: wall (s)", [_fmt(r["unchanged"]["wall_seconds"], "{:.1f}") for r in runs], "")
    row("no-change re-run / full run", [_fmt(r["unchanged_fraction_of_full"]) for r in runs], "<= 0.10")
    row("no-change re-run: assets recomputed", [str(len(r["unchanged"]["computed"])) for r in runs], "0")
    row("PPO-only re-run: wall (s)", [_fmt(r["ppo_only"]["wall_seconds"], "{:.1f}") for r in runs], "")
    row("PPO-only re-run: ppo + eval compute (s)", [_fmt(r["ppo_eval_compute_seconds"], "{:.1f}") for r in runs], "")
    row("PPO-only re-run / (ppo + eval compute)", [_fmt(r["ppo_only_vs_ppo_eval_compute"]) for r in runs], "<= 1.10")
    row("PPO-only re-run: assets recomputed", [", ".join(r["ppo_only"]["computed"]) for r in runs], "ppo_policy, evaluation_report")
    table = "\n".join(rows)
    plain = results.get("plain_trl")
    if plain:
        table = table if runs else ""
        table += "\n\n| stage | pipeline step (s) | plain TRL script (s) | ratio | target |\n|---|---|---|---|---|\n"
        for name in ("sft", "reward_model"):
            entry = plain[name]
            table += (f"| {name} | {_fmt(entry['stage_seconds'], '{:.1f}')} | {_fmt(entry['plain']['total_seconds'], '{:.1f}')} "
                      f"| {_fmt(entry['ratio'])} | <= 1.05 |\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", help="run-config YAML (default: the default profile, no run config)")
    parser.add_argument("--executors", default="in_process,multiprocess",
                        help=f"comma-separated, of {', '.join(EXECUTORS)} (default in_process,multiprocess)")
    parser.add_argument("--skip-plain-trl", action="store_true", help="skip (4), SFT and RM as plain TRL scripts")
    parser.add_argument("--keep", action="store_true", help="keep the scratch instances and artifacts")
    parser.add_argument("--plain-trl-from", metavar="DAGSTER_HOME",
                        help="only (4), against the latest full run in this instance (e.g. a kept earlier benchmark's)")
    args = parser.parse_args(argv)
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    unknown = [e for e in executors if e not in EXECUTORS]
    if unknown:
        parser.error(f"unknown executor(s) {unknown}; choose from {list(EXECUTORS)}")
    profile = yaml.safe_load(Path(args.profile).read_text()) if args.profile else {}

    workdir = Path(tempfile.mkdtemp(prefix="rlhf-bench-pipeline-"))
    results: dict[str, Any] = {
        "profile": args.profile or "default",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "executors": [],
    }
    try:
        if args.plain_trl_from:
            executors = ["plain-trl"]
            results["plain_trl"] = benchmark_plain_trl(profile, full_run_of(Path(args.plain_trl_from)), workdir)
        else:
            code_dir = snapshot_code(workdir)
            results["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                                   text=True).stdout.strip()
            for executor in executors:
                results["executors"].append(benchmark_executor(profile, executor, workdir, code_dir))
            if not args.skip_plain_trl and results["executors"]:
                results["plain_trl"] = benchmark_plain_trl(profile, results["executors"][0], workdir)
    finally:
        results["load_average_at_end"] = os.getloadavg()
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        profile_name = Path(args.profile).stem if args.profile else "default"
        out = RESULTS_DIR / f"pipeline-{profile_name}-{'-'.join(executors)}.json"
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(report_table(results))
    print(f"\nload average {results['load_average_at_start']} -> {results['load_average_at_end']} on "
          f"{results['cpu_count']} CPUs; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
