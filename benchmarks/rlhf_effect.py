"""Does RLHF work on the default job, and not by luck? The default job for several seeds, one table.

    .venv/bin/python benchmarks/rlhf_effect.py                 # 5 seeds (0..4), the embedded default
    .venv/bin/python benchmarks/rlhf_effect.py --seeds 0 1 --profile pipeline/profiles/tiny.yaml
    .venv/bin/python benchmarks/rlhf_effect.py --keep /tmp/runs      # keep each seed's instance and artifacts
    .venv/bin/python benchmarks/rlhf_effect.py --from-kept /tmp/runs # re-read those reports, run nothing

Each seed is one `dagster job execute -m pipeline.definitions -j rlhf_pipeline` (what `make run`
does) on a fresh Dagster instance and artifacts root, with every seed of the run config shifted by
the same amount: the data generator's (SFT data, preference data, PPO and evaluation prompts),
pretraining's, SFT's, the reward model's, PPO's and the evaluation's. Nothing else changes.

From each run's `eval.json` it reads the targets of the RLHF-effect issue and prints one row per
seed (a cell is marked `x` where the seed misses that target), then how many seeds meet them all.
Results go to benchmarks/results/rlhf_effect.json. A benchmark, not a test: it takes minutes per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.storage.contract import EVAL_JSON

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DAGSTER_BIN = Path(sys.executable).with_name("dagster")
SEEDED_ASSETS = (
    "sft_data", "preference_data", "ppo_prompts", "eval_prompts",
    "base_model", "sft_checkpoint", "reward_model", "ppo_policy", "evaluation_report",
)


def seeded_run_config(profile: dict[str, Any], seed: int) -> dict[str, Any]:
    """The profile with every stage's `seed` set to `seed` (all generator and training seeds shifted)."""
    ops = dict(profile.get("ops", {}))
    for asset in SEEDED_ASSETS:
        entry = dict(ops.get(asset, {}))
        entry["config"] = {**entry.get("config", {}), "seed": seed}
        ops[asset] = entry
    return {**profile, "ops": ops}


def _rate(entry: dict[str, Any]) -> tuple[float | None, list[float] | None]:
    return entry.get("rate"), entry.get("ci95")


def worst_correlations(report: dict[str, Any], key: str) -> tuple[float, str] | None:
    """The largest |corr(RM score, length)| (`key`) over every model's sampled and greedy answers, and whose it is."""
    found = [
        (abs(m[key]), f"{name}{' greedy' if comparison is report['greedy'] else ''}")
        for comparison in (report, report["greedy"]) for name, m in comparison["models"].items() if m.get(key) is not None
    ]
    return max(found) if found else None


def notes(report: dict[str, Any]) -> dict[str, str]:
    """Columns shown beside the targets, not targets themselves."""
    within = worst_correlations(report, "rm_length_correlation_within_kind")
    return {"max abs corr within kind": f"{within[0]:.2f} ({within[1]})" if within else "n/a"}


def targets(report: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    """Each target of the issue: (the value shown, met?)."""
    win = report["win_rates"]["ppo_vs_sft"]
    rm_rate, rm_ci = _rate(win["reward_model"])
    judge_rate, _ = _rate(win["pairwise_judge"])
    difference = report["checker_accuracy_difference"]["ppo_vs_sft"]
    models = report["models"]
    greedy = report["greedy"]
    greedy_rm_rate, greedy_rm_ci = _rate(greedy["win_rates"]["ppo_vs_sft"]["reward_model"])
    greedy_difference = greedy["checker_accuracy_difference"]["ppo_vs_sft"]["difference"]
    kl, kl_bound = report.get("kl_ppo_vs_sft"), report.get("kl_bound")
    length_ratio = report.get("length_ratio_ppo_vs_sft")
    correlations = worst_correlations(report, "rm_length_correlation")  # every model's answers, sampled and greedy
    concept = {name: models[name].get("concept_match_rate") for name in ("sft", "ppo")}
    return {
        "RM win PPO>SFT [CI]": (f"{rm_rate:.2f} [{rm_ci[0]:.2f}, {rm_ci[1]:.2f}]", rm_rate >= 0.65 and rm_ci[0] > 0.5),
        "checker SFT": (f"{models['sft']['checker_accuracy']:.2f}", models["sft"]["checker_accuracy"] >= 0.2),
        "checker PPO-SFT [CI]": (
            f"{difference['difference']:+.3f} [{difference['ci95'][0]:+.2f}, {difference['ci95'][1]:+.2f}]",
            difference["difference"] >= 0.15 and difference["ci95"][0] > 0,
        ),
        "judge win": (f"{judge_rate:.2f}", judge_rate > 0.5),
        "greedy RM win [CI]": (
            f"{greedy_rm_rate:.2f} [{greedy_rm_ci[0]:.2f}, {greedy_rm_ci[1]:.2f}]", greedy_rm_ci[1] >= 0.5,
        ),
        "greedy checker PPO-SFT": (f"{greedy_difference:+.2f}", greedy_difference >= -0.05),
        "KL / bound": (
            f"{kl:.2f} / {kl_bound:g}" if kl is not None else "n/a",
            kl is not None and kl_bound is not None and kl <= kl_bound,
        ),
        "length PPO/SFT": (f"{length_ratio:.2f}", length_ratio is not None and 0.6 <= length_ratio <= 1.5),
        "max abs corr(RM, len)": (
            f"{correlations[0]:.2f} ({correlations[1]})" if correlations else "n/a",
            bool(correlations) and correlations[0] <= 0.5,
        ),
        "concept match SFT / PPO": (
            f"{concept['sft']:.2f} / {concept['ppo']:.2f}",
            min(concept.values()) >= 0.8,
        ),
    }


def newest_report(artifacts: Path) -> Path | None:
    """eval.json of the newest evaluation_report artifact (directories are named by UTC timestamp)."""
    reports = sorted((artifacts / "evaluation_report").glob(f"[0-9]*/{EVAL_JSON}"))
    return reports[-1] if reports else None


def row_from_report(seed: int, wall: float | None, report_path: Path | None) -> dict[str, Any]:
    if report_path is None:
        return {"seed": seed, "wall_seconds": wall, "failed": True, "log_tail": "no evaluation report"}
    report = json.loads(report_path.read_text())
    return {"seed": seed, "wall_seconds": wall, "failed": False,
            "targets": {k: {"value": v, "met": met} for k, (v, met) in targets(report).items()}, "notes": notes(report)}


def run_seed(profile: dict[str, Any], seed: int, keep: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"rlhf-effect-{seed}-") as scratch:
        root = Path(keep) / f"seed{seed}" if keep else Path(scratch)
        home, artifacts = root / "dagster_home", root / "artifacts"
        home.mkdir(parents=True, exist_ok=True)
        config_path = root / "run_config.yaml"
        config_path.write_text(yaml.safe_dump(seeded_run_config(profile, seed)))
        env = {**os.environ, "DAGSTER_HOME": str(home), "RLHF_ARTIFACTS_ROOT": str(artifacts)}
        started = time.perf_counter()
        done = subprocess.run(
            [str(DAGSTER_BIN), "job", "execute", "-m", "pipeline.definitions", "-j", "rlhf_pipeline", "-c", str(config_path)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        )
        wall = time.perf_counter() - started
        report_path = newest_report(artifacts)
        if done.returncode != 0 or report_path is None:
            tail = (done.stdout + done.stderr)[-3000:]
            return {"seed": seed, "wall_seconds": wall, "failed": True, "log_tail": tail}
        return row_from_report(seed, wall, report_path)


def _seconds(row: dict[str, Any]) -> str:
    return f"{row['wall_seconds']:.0f}" if row.get("wall_seconds") is not None else "-"


def render(rows: list[dict[str, Any]]) -> str:
    names = next((list(r["targets"]) for r in rows if not r["failed"]), [])
    note_names = next((list(r["notes"]) for r in rows if not r["failed"]), [])
    lines = ["| seed | wall (s) | " + " | ".join(names) + " | all met | " + "".join(f"{n} | " for n in note_names),
             "|---" * (len(names) + 3 + len(note_names)) + "|"]
    for row in rows:
        if row["failed"]:
            lines.append(f"| {row['seed']} | {_seconds(row)} | " + " | ".join("run failed" for _ in names) + " | no |"
                         + " |" * len(note_names))
            continue
        cells = [f"{t['value']}{'' if t['met'] else ' x'}" for t in row["targets"].values()]
        met = all(t["met"] for t in row["targets"].values())
        lines.append(f"| {row['seed']} | {_seconds(row)} | " + " | ".join(cells) + f" | {'yes' if met else 'no'} |"
                     + "".join(f" {row['notes'][n]} |" for n in note_names))
    n_met = sum(not r["failed"] and all(t["met"] for t in r["targets"].values()) for r in rows)
    lines.append(f"\n{n_met} of {len(rows)} seeds meet every target (an `x` marks a missed one).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--profile", type=Path, help="run-config YAML to start from (default: the embedded default)")
    parser.add_argument("--keep", type=Path, help="keep each seed's Dagster home and artifacts under this directory")
    parser.add_argument("--from-kept", type=Path, help="only re-read the reports of an earlier --keep directory")
    args = parser.parse_args()
    if args.from_kept:
        rows = [row_from_report(seed, None, newest_report(args.from_kept / f"seed{seed}" / "artifacts")) for seed in args.seeds]
        print(render(rows))
        return
    profile = yaml.safe_load(args.profile.read_text()) if args.profile else {}
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(profile, seed, args.keep))
        row = rows[-1]
        print(f"seed {seed}: {'FAILED' if row['failed'] else 'done'} in {row['wall_seconds']:.0f} s", flush=True)
        if row["failed"]:
            print(row["log_tail"], file=sys.stderr)
    print(render(rows))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "rlhf_effect.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
