"""GPU profile benchmark: stage times, the PPO step split, generated tokens per second, peak GPU memory.

    .venv/bin/python benchmarks/gpu_profile.py                    # pipeline/profiles/gpu.yaml, on the GPU
    .venv/bin/python benchmarks/gpu_profile.py --reduced          # tiny profile, any device (checks the harness)
    .venv/bin/python benchmarks/gpu_profile.py --profile my.yaml --stages base_model,sft_data,sft_checkpoint
    .venv/bin/python benchmarks/gpu_profile.py --eight-minutes          # one H100/H200, one 8-minute run (below)
    .venv/bin/python benchmarks/gpu_profile.py --eight-minutes --reduced   # the same harness on the tiny profile, any device

The job's assets are materialized one at a time, in dependency order, in this process (in-process
executor) on a fresh Dagster instance and artifacts root, so each stage gets its own wall time and
its own peak GPU memory (`torch.cuda.max_memory_allocated`, reset before each stage; 0 on a CPU).

- PPO step split: from `ppo_policy`'s `ppo_train_metrics.jsonl` (per step: generation = sampling
  the responses; scoring = the rest of the rollout: old/reference log-probs, reward, values;
  training = the PPO epochs), as mean seconds per step and shares of the step.
- Generated tokens/s: the PPO sampler (`pipeline.ppo.rollout.sample_responses`) on the newest
  policy (PPO, else SFT, else base) at the profile's PPO batch size and response length, on
  `eval_prompts`, after one warm-up batch; counts response tokens up to and including EOS.

- `--eight-minutes`: `pipeline/profiles/gpu_8min.yaml`, the whole graph on a ~100M-parameter model
  sized for one H100 / H200 within 8 minutes, then our PPO against TRL 1.12's PPOTrainer on that
  run's SFT model, reward model and prompts (`benchmarks/ppo_vs_trl.py`'s workers, one seed each,
  on the GPU), and the total wall time against the 480 s budget. TRL runs in its own environment:
  `--trl-python` or `benchmarks/.venv-trl112` (an isolated GPU machine cannot create one; without
  it the comparison is reported as skipped, with the reason).

Writes benchmarks/results/gpu_profile-<device>.json and .md (or under --out) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_PROFILE = REPO_ROOT / "pipeline" / "profiles" / "gpu.yaml"
TINY_PROFILE = REPO_ROOT / "pipeline" / "profiles" / "tiny.yaml"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
EIGHT_MINUTE_PROFILE = REPO_ROOT / "pipeline" / "profiles" / "gpu_8min.yaml"
EIGHT_MINUTES_S = 480
POLICY_PREFERENCE = ("ppo_policy", "sft_checkpoint", "base_model")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", type=Path, help=f"run-config YAML (default {GPU_PROFILE.name}; --reduced: {TINY_PROFILE.name})")
    parser.add_argument("--reduced", action="store_true", help="the tiny profile: a quick check that works on a CPU")
    parser.add_argument("--eight-minutes", action="store_true",
                        help=f"{EIGHT_MINUTE_PROFILE.name} (one H100/H200 in 8 minutes) and our PPO against TRL 1.12 at that size")
    parser.add_argument("--trl-python", type=Path, help="python of a TRL 1.12 environment (default benchmarks/.venv-trl112)")
    parser.add_argument("--trl-episodes", type=int, default=256, help="--eight-minutes: PPO episodes of each trainer")
    parser.add_argument("--stages", help="comma-separated asset keys to materialize (default: the whole graph)")
    parser.add_argument("--generation-batches", type=int, default=3, help="timed sampling batches for tokens/s")
    parser.add_argument("--keep-artifacts", action="store_true", help="keep the run's artifacts and Dagster instance")
    parser.add_argument("--out", type=Path, help="where results and the run's artifacts go (default benchmarks/results)")
    return parser.parse_args(argv)


def cuda_peak_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_gib() -> float:
    import torch

    if not torch.cuda.is_available():
        return 0.0
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"


def stage_order(defs, wanted: list[str] | None) -> list[str]:
    graph = defs.resolve_asset_graph()
    order = [key.to_user_string() for key in graph.toposorted_asset_keys if graph.get(key).is_materializable]
    if wanted is None:
        return order
    unknown = sorted(set(wanted) - set(order))
    if unknown:
        raise SystemExit(f"--stages: {', '.join(unknown)} not in the graph ({', '.join(order)})")
    return [key for key in order if key in wanted]


def run_stages(defs, run_config: dict[str, Any], stages: list[str], instance) -> list[dict[str, Any]]:
    """Materialize each stage on its own; wall seconds and peak GPU memory per stage."""
    import dagster as dg

    job = defs.resolve_job_def("rlhf_pipeline")
    rows = []
    for key in stages:
        config = {"ops": {key: run_config["ops"][key]}} if key in run_config.get("ops", {}) else {}
        cuda_peak_reset()
        started = time.perf_counter()
        result = job.execute_in_process(run_config=config, instance=instance, asset_selection=[dg.AssetKey(key)])
        seconds = time.perf_counter() - started
        if not result.success:
            raise SystemExit(f"stage {key} failed (run {result.run_id})")
        rows.append({"stage": key, "seconds": seconds, "peak_gpu_gib": cuda_peak_gib()})
        print(f"  {key}: {seconds:.1f} s, peak GPU {rows[-1]['peak_gpu_gib']:.2f} GiB", flush=True)
    return rows


def artifact_path(instance, key: str) -> Path | None:
    from pipeline.orchestration.materializations import artifact_path_of, latest_materialization

    record = latest_materialization(instance, key)
    return artifact_path_of(record) if record is not None else None


def ppo_step_split(metrics_file: Path) -> dict[str, Any] | None:
    """Mean seconds per PPO step in generation, scoring and training, from the trainer's own timings."""
    steps = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    steps = [s for s in steps if "step_seconds" in s and "rollout_seconds" in s]
    if not steps:
        return None
    mean = lambda field: sum(s[field] for s in steps) / len(steps)  # noqa: E731
    step, rollout = mean("step_seconds"), mean("rollout_seconds")
    split: dict[str, Any] = {"n_steps": len(steps), "step_seconds": step, "training_seconds": step - rollout}
    if all("generation_seconds" in s for s in steps):
        split["generation_seconds"] = mean("generation_seconds")
        split["generation_share"] = split["generation_seconds"] / step if step else None
        split["scoring_seconds"] = rollout - split["generation_seconds"]
        tokens = sum(s.get("generated_tokens", 0) for s in steps)
        split["generated_tokens_per_second_in_ppo"] = tokens / sum(s["generation_seconds"] for s in steps) if tokens else None
    else:  # older PPO metrics: only the whole rollout is timed
        split["rollout_seconds"] = rollout
    return split


def generation_throughput(policy_dir: Path, prompts: list[str], batch_size: int, max_new_tokens: int,
                          temperature: float, n_batches: int) -> dict[str, Any]:
    """Response tokens per second of the PPO sampler, after one warm-up batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.ppo.rollout import encode_prompts, sample_responses
    from pipeline.training.device import select_device

    choice = select_device("auto")
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=choice.dtype).to(choice.device).eval()
    generator = torch.Generator(device=choice.device).manual_seed(0)
    batches = [[prompts[(b * batch_size + i) % len(prompts)] for i in range(batch_size)] for b in range(n_batches + 1)]
    tokens, seconds = 0, 0.0
    for index, batch_prompts in enumerate(batches):
        batch = encode_prompts(tokenizer, batch_prompts, choice.device)
        cuda_peak_reset()
        started = time.perf_counter()
        rollout = sample_responses(model, batch, max_new_tokens, temperature, tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        n_tokens = int(rollout.response_lengths.sum())  # syncs
        if index > 0:  # the first batch warms up kernels and the allocator
            tokens += n_tokens
            seconds += time.perf_counter() - started
    return {
        "policy": str(policy_dir), "dtype": str(choice.dtype).replace("torch.", ""), "batch_size": batch_size,
        "max_new_tokens": max_new_tokens, "timed_batches": n_batches, "generated_tokens": tokens,
        "seconds": seconds, "tokens_per_second": tokens / seconds if seconds else None,
        "peak_gpu_gib": cuda_peak_gib(),
    }


def ppo_against_trl(instance, run_config: dict[str, Any], trl_python: Path | None, episodes: int, work: Path) -> dict[str, Any]:
    """Our PPO and TRL 1.12's on this run's SFT model, reward model and prompts, one seed each, on this device:
    episodes/s of the training loop, peak GPU memory, RM-score gain and KL to SFT on held-out prompts."""
    import importlib.util

    import torch
    from transformers import AutoTokenizer

    from pipeline.data.records import load_data
    from pipeline.training.chat_format import render_prompt

    spec = importlib.util.spec_from_file_location("ppo_vs_trl", REPO_ROOT / "benchmarks" / "ppo_vs_trl.py")
    ppo_vs_trl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ppo_vs_trl)
    trl_python = trl_python or ppo_vs_trl.TRL_VENV / "bin" / "python"
    if not trl_python.exists():
        return {"skipped": f"no TRL 1.12 environment at {trl_python} (create it with benchmarks/ppo_vs_trl.py on a "
                           "machine with a package index, or pass --trl-python)"}
    sft, rm, prompts_dir = (artifact_path(instance, key) for key in ("sft_checkpoint", "reward_model", "ppo_prompts"))
    if None in (sft, rm, prompts_dir):
        return {"skipped": "the run has no sft_checkpoint, reward_model or ppo_prompts to compare on"}
    ppo = {"batch_size": 64, "minibatch_size": 16, "ppo_epochs": 2, "max_new_tokens": 64, "learning_rate": 1e-5,
           **run_config.get("ops", {}).get("ppo_policy", {}).get("config", {})}
    prompts = [r["prompt"] for r in load_data(prompts_dir)]
    n_held_out = min(16, len(prompts) // 4)
    train_prompts, held_out = prompts[:-n_held_out], prompts[-n_held_out:]
    tokenizer = AutoTokenizer.from_pretrained(sft)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    job = {
        "sft": str(sft), "rm": str(rm), "prompts": train_prompts, "device": device,
        "prompt_ids": [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in train_prompts],
        "episodes": max(episodes // ppo["batch_size"], 1) * ppo["batch_size"], "batch_size": ppo["batch_size"],
        "minibatch_size": ppo["minibatch_size"], "ppo_epochs": ppo["ppo_epochs"], "response_length": ppo["max_new_tokens"],
        "temperature": 1.0, "learning_rate": ppo["learning_rate"], "value_learning_rate": None, "kl_coef": 0.05,
        "missing_eos_penalty": 1.0, "threads": 1, "seed": 0,
    }
    evaluation = argparse.Namespace(eval_samples=4, response_length=job["response_length"], temperature=1.0)
    runs = {}
    for trainer in ("ours", "trl"):
        workdir = work / f"ppo-vs-trl-{trainer}"
        workdir.mkdir()
        runs[trainer] = ppo_vs_trl.run_one(trainer, job, workdir, trl_python)
        runs[trainer].update(ppo_vs_trl.evaluate_policy(workdir / "policy", sft, rm, held_out, evaluation, device))
        print(f"  PPO vs TRL, {trainer}: {runs[trainer]['episodes_per_second']:.2f} episodes/s", flush=True)
    return {
        "episodes": job["episodes"], "batch_size": job["batch_size"], "response_length": job["response_length"],
        "runs": runs, "episodes_per_second_ratio": runs["ours"]["episodes_per_second"] / runs["trl"]["episodes_per_second"],
    }


def markdown_report(result: dict[str, Any]) -> str:
    lines = [f"# GPU profile: {result['device']}", "",
             f"Profile `{result['profile']}`, {result['timestamp']}, torch {result['torch']}.", "",
             "| stage | seconds | peak GPU GiB |", "|---|---:|---:|"]
    lines += [f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_gpu_gib']:.2f} |" for r in result["stages"]]
    lines.append(f"| **total** | {sum(r['seconds'] for r in result['stages']):.1f} | "
                 f"{max((r['peak_gpu_gib'] for r in result['stages']), default=0):.2f} |")
    split = result.get("ppo_step_split")
    if split:
        lines += ["", f"PPO step ({split['n_steps']} steps), mean seconds per step:", "",
                  "| part | seconds | share |", "|---|---:|---:|"]
        parts = [p for p in ("generation_seconds", "scoring_seconds", "rollout_seconds", "training_seconds") if p in split]
        lines += [f"| {p.removesuffix('_seconds')} | {split[p]:.3f} | {split[p] / split['step_seconds']:.0%} |" for p in parts]
    generation = result.get("generation")
    if generation:
        lines += ["", f"Generation: {generation['tokens_per_second']:.0f} tokens/s "
                      f"(batch {generation['batch_size']}, up to {generation['max_new_tokens']} new tokens, "
                      f"{generation['dtype']}, {generation['generated_tokens']} tokens in {generation['seconds']:.2f} s, "
                      f"policy `{Path(generation['policy']).parent.name}`)."]
    comparison = result.get("ppo_vs_trl")
    if comparison and "skipped" in comparison:
        lines += ["", f"PPO against TRL 1.12: skipped, {comparison['skipped']}."]
    elif comparison:
        lines += ["", f"PPO against TRL 1.12 ({comparison['episodes']} episodes, batch {comparison['batch_size']}, "
                      f"responses up to {comparison['response_length']} tokens, one seed):", "",
                  "| trainer | episodes/s | peak GPU GiB | RM-score gain | KL to SFT |", "|---|---:|---:|---:|---:|"]
        for trainer, run in comparison["runs"].items():
            lines.append(f"| {trainer} | {run['episodes_per_second']:.2f} | {run.get('peak_gpu_gib') or 0:.2f} | "
                         f"{run['rm_score_gain']:+.3f} | {run['kl_to_sft']:.2f} |")
        lines.append(f"| ours / TRL | {comparison['episodes_per_second_ratio']:.2f}x | | | |")
    if "wall_seconds" in result:
        verdict = "within" if result["wall_seconds"] <= result["budget_seconds"] else "OVER"
        lines += ["", f"Wall time {result['wall_seconds']:.0f} s, {verdict} the {result['budget_seconds']} s budget."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    profile = args.profile or (TINY_PROFILE if args.reduced else EIGHT_MINUTE_PROFILE if args.eight_minutes else GPU_PROFILE)
    run_config = yaml.safe_load(profile.read_text()) or {}
    out = args.out or RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-profile-", dir=out))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import dagster as dg
    import torch

    from pipeline import definitions
    from pipeline.orchestration.resources import ArtifactStoreResource
    from pipeline.storage.contract import PPO_METRICS_FILE

    # The same assets, checks and job, writing under this run's own artifacts root.
    defs = dg.Definitions(
        assets=definitions.defs.assets, asset_checks=definitions.defs.asset_checks,
        jobs=[dg.define_asset_job("rlhf_pipeline", selection=dg.AssetSelection.all())],
        resources={**definitions.defs.resources, "artifacts": ArtifactStoreResource(root=str(work / "artifacts"))},
    )
    stages = stage_order(defs, args.stages.split(",") if args.stages else None)
    print(f"gpu profile: {profile} on {device_name()}, stages: {', '.join(stages)}", flush=True)
    (work / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(work / "dagster_home")) as instance:
        rows = run_stages(defs, run_config, stages, instance)
        result: dict[str, Any] = {
            "device": device_name(), "profile": str(profile), "torch": torch.__version__,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "benchmarks/gpu_profile.py", *(argv or sys.argv[1:])]),
            "stages": rows,
        }
        ppo_dir = artifact_path(instance, "ppo_policy")
        if ppo_dir is not None and (ppo_dir / PPO_METRICS_FILE).exists():
            result["ppo_step_split"] = ppo_step_split(ppo_dir / PPO_METRICS_FILE)
        policy_dir = next((p for p in (artifact_path(instance, k) for k in POLICY_PREFERENCE) if p is not None), None)
        eval_dir = artifact_path(instance, "eval_prompts")
        if policy_dir is not None:
            from pipeline.data.records import load_data

            prompts = [r["prompt"] for r in load_data(eval_dir)] if eval_dir else ["Explain what a reward model is."]
            ppo_config = run_config.get("ops", {}).get("ppo_policy", {}).get("config", {})
            result["generation"] = generation_throughput(
                policy_dir, prompts, ppo_config.get("batch_size", 64), ppo_config.get("max_new_tokens", 64),
                ppo_config.get("temperature", 0.7), args.generation_batches,
            )
        if args.eight_minutes:
            result["ppo_vs_trl"] = ppo_against_trl(instance, run_config, args.trl_python, args.trl_episodes, work)
            result["wall_seconds"] = time.perf_counter() - started
            result["budget_seconds"] = EIGHT_MINUTES_S
    if not args.keep_artifacts:
        shutil.rmtree(work, ignore_errors=True)
    stem = "gpu_profile-" + ("".join(c if c.isalnum() else "_" for c in result["device"]).strip("_")[:40])
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown_report(result)
    (out / f"{stem}.md").write_text(report)
    print(report)
    return result


if __name__ == "__main__":
    main()
