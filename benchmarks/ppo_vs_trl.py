"""Our PPO (`pipeline.ppo`) against TRL 1.12.0's `trl.experimental.ppo.PPOTrainer`, on the same inputs.

    .venv/bin/python benchmarks/ppo_vs_trl.py [--artifacts-root artifacts] [--episodes 384] [--repeats 3]

Both trainers get the same SFT model, reward model, prompts, rollout batch size, minibatch size,
response length, PPO epochs, temperature, learning rate (constant), KL coefficient and clip
ranges. TRL runs in its own virtual environment (`benchmarks/.venv-trl112`, created on first use
with trl==1.12.0, transformers==5.23.0, torch==2.13.0 CPU, accelerate). Each training run is a
separate process; runs alternate (ours, TRL, TRL, ours, ...) so drift in machine load hits both.
Repeat r trains both trainers with seed `--seed + r`: the RM-score gain after a few hundred episodes
varies from seed to seed by about as much as the trainers differ, so compare medians over seeds.

Per run: episodes/second of the training loop (model loading and saving excluded), peak resident
memory of the process (ru_maxrss) up to the end of training, and, on held-out prompts with answers
sampled at the training temperature and scored by the same code for both: the RM-score gain of the
trained policy over the SFT model, and the policy's KL to the SFT model (what the gain cost).
Prints a table with medians and ratios; writes JSON under `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = REPO_ROOT / "benchmarks" / ".venv-trl112"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
TORCH_WHEEL_GLOB = "/opt/wheels/torch-2.13.0+cpu-*.whl"
TRL_REQUIREMENTS = ["trl==1.12.0", "transformers==5.23.0", "accelerate==1.15.0"]
TRL_ADAM_EPSILON = 1e-8  # transformers.TrainingArguments.adam_epsilon, which TRL's PPOTrainer uses


# --- workers (run in a child process; the TRL one under the TRL venv's python) ----------------


def run_ours(job: dict) -> dict:
    from pipeline.ppo.algorithm import train_ppo
    from pipeline.settings import PpoSettings

    settings = PpoSettings(
        total_episodes=job["episodes"], batch_size=job["batch_size"], minibatch_size=job["minibatch_size"],
        ppo_epochs=job["ppo_epochs"], learning_rate=job["learning_rate"], value_learning_rate=job.get("value_learning_rate"),
        adam_epsilon=TRL_ADAM_EPSILON,  # the same optimizer as TRL's: HF Trainer's AdamW, eps 1e-8, no weight decay
        max_new_tokens=job["response_length"],
        temperature=job["temperature"], kl_coef=job["kl_coef"], missing_eos_penalty=job["missing_eos_penalty"],
        checkpoint_every=0, n_eval_prompts=0, n_eval_samples=1, seed=job["seed"], device=job.get("device", "cpu"),
        cpu_threads=job["threads"],
    )
    peak = {}

    def record_peak(record):  # the process's peak after each step: loading + training, not the evaluation after it
        peak["rss_mb"] = peak_rss_mb()

    summary = train_ppo(Path(job["sft"]), Path(job["rm"]), job["prompts"], Path(job["output"]), settings, on_step=record_peak)
    return {"train_seconds": summary["train_seconds"], "peak_rss_mb": peak["rss_mb"]}


def run_trl(job: dict) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    import torch
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    on_gpu = job.get("device", "cpu") != "cpu"

    tokenizer = AutoTokenizer.from_pretrained(job["sft"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(job["sft"])
    ref_policy = AutoModelForCausalLM.from_pretrained(job["sft"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(job["rm"], num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(job["rm"], num_labels=1)
    dataset = Dataset.from_dict({"input_ids": job["prompt_ids"]})
    with tempfile.TemporaryDirectory(prefix="trl-ppo-") as scratch:
        config = PPOConfig(
            output_dir=scratch,
            per_device_train_batch_size=job["batch_size"],
            gradient_accumulation_steps=1,
            num_mini_batches=job["batch_size"] // job["minibatch_size"],
            num_ppo_epochs=job["ppo_epochs"],
            total_episodes=job["episodes"],
            local_rollout_forward_batch_size=job["batch_size"],
            response_length=job["response_length"],
            temperature=job["temperature"],
            learning_rate=job["learning_rate"],
            lr_scheduler_type="constant",
            kl_coef=job["kl_coef"],
            missing_eos_penalty=job["missing_eos_penalty"],
            stop_token="eos",
            num_sample_generations=0,
            bf16=on_gpu and torch.cuda.is_bf16_supported(),  # as ours: bf16 on a GPU that has it, else fp32
            gradient_checkpointing=False,
            use_cpu=not on_gpu,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=job["seed"],
            dataloader_num_workers=0,
        )
        trainer = PPOTrainer(
            args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy, reward_model=reward_model,
            value_model=value_model, train_dataset=dataset, eval_dataset=dataset.select(range(job["batch_size"])),
        )
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        peak = peak_rss_mb()
    policy.save_pretrained(job["output"])
    tokenizer.save_pretrained(job["output"])
    return {"train_seconds": train_seconds, "peak_rss_mb": peak}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def worker_main(job_file: str) -> None:
    import torch

    job = json.loads(Path(job_file).read_text())
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    result = run_ours(job) if job["trainer"] == "ours" else run_trl(job)
    result["episodes_per_second"] = job["episodes"] / result["train_seconds"]
    result["peak_gpu_gib"] = peak_gpu_gib()
    Path(job["result"]).write_text(json.dumps(result))


# --- driver ----------------------------------------------------------------------------------


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if python.exists():
        return python
    import glob

    wheels = glob.glob(TORCH_WHEEL_GLOB)
    torch_requirement = wheels[0] if wheels else "torch==2.13.0"
    print(f"creating {TRL_VENV} with {', '.join(TRL_REQUIREMENTS)} and {torch_requirement}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    extra_index = [] if wheels else ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", torch_requirement, *TRL_REQUIREMENTS, *extra_index], check=True)
    return python


def latest_artifact(root: Path, asset: str) -> Path:
    candidates = sorted(p for p in (root / asset).glob("*") if p.is_dir() and not p.name.startswith("."))
    if not candidates:
        raise SystemExit(f"no {asset} artifact under {root}; run `make run` first or pass --{asset.replace('_', '-')}")
    return candidates[-1]


def evaluate_policy(policy_dir: Path, sft_dir: Path, rm_dir: Path, prompts: list[str], args, device: str = "cpu") -> dict[str, float]:
    """On the held-out prompts, with answers sampled at the training temperature by the same code for
    both trainers: the mean RM score of the policy minus the SFT model's, and the policy's KL to SFT
    (`pipeline.ppo.rollout.sequence_kl`, the same measurement as PPO's summary and the evaluation report)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.ppo.rollout import (
        encode_prompts, pack_rollout, reward_scores, sample_responses, sequence_kl, sequence_logprobs,
    )

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1).to(device).eval()
    sft = AutoModelForCausalLM.from_pretrained(sft_dir).to(device).eval()
    policy = AutoModelForCausalLM.from_pretrained(policy_dir).to(device).eval()
    repeated = [p for p in prompts for _ in range(args.eval_samples)]
    scores: dict[str, list[float]] = {"policy": [], "sft": []}
    kls: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(repeated), 64):
            batch = encode_prompts(tokenizer, repeated[start : start + 64], torch.device(device))
            for name, model in (("policy", policy), ("sft", sft)):
                generator = torch.Generator(device=device).manual_seed(1234 + start)
                rollout = sample_responses(model, batch, args.response_length, args.temperature,
                                           tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
                packed = pack_rollout(rollout)
                scores[name] += reward_scores(reward_model, packed).tolist()
                if name == "policy":
                    kls += sequence_kl(sequence_logprobs(policy, packed, args.temperature),
                                       sequence_logprobs(sft, packed, args.temperature)).tolist()
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {"rm_score_gain": mean(scores["policy"]) - mean(scores["sft"]), "kl_to_sft": mean(kls)}


def run_one(trainer: str, job: dict, workdir: Path, trl_python: Path) -> dict:
    job = {**job, "trainer": trainer, "output": str(workdir / "policy"), "result": str(workdir / "result.json")}
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps(job))
    python = sys.executable if trainer == "ours" else str(trl_python)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(job["threads"]), "TRANSFORMERS_VERBOSITY": "error"}
    completed = subprocess.run([python, __file__, "--worker", str(job_file)], env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{trainer} run failed:\n{completed.stderr[-4000:]}")
    return json.loads((workdir / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts-root", type=Path, default=Path(os.environ.get("RLHF_ARTIFACTS_ROOT", REPO_ROOT / "artifacts")))
    parser.add_argument("--sft-checkpoint", type=Path, help="default: the latest under the artifacts root")
    parser.add_argument("--reward-model", type=Path)
    parser.add_argument("--ppo-prompts", type=Path)
    parser.add_argument("--episodes", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--minibatch-size", type=int, default=32)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--response-length", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--value-learning-rate", type=float, default=None,
                        help="ours only (TRL has one rate for policy and value); default: --learning-rate")
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--missing-eos-penalty", type=float, default=1.0)
    parser.add_argument("--eval-prompts", type=int, default=16, help="held-out tail of ppo_prompts for the RM-score gain")
    parser.add_argument("--eval-samples", type=int, default=32, help="sampled answers per held-out prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both trainers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat; repeat r uses seed + r")
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return

    from transformers import AutoTokenizer

    from pipeline.data.records import load_data
    from pipeline.training.chat_format import render_prompt

    trl_python = ensure_trl_venv()
    sft = args.sft_checkpoint or latest_artifact(args.artifacts_root, "sft_checkpoint")
    rm = args.reward_model or latest_artifact(args.artifacts_root, "reward_model")
    prompts_dir = args.ppo_prompts or latest_artifact(args.artifacts_root, "ppo_prompts")
    prompts = [r["prompt"] for r in load_data(prompts_dir)]
    train_prompts, eval_prompts = prompts[: -args.eval_prompts], prompts[-args.eval_prompts :]
    tokenizer = AutoTokenizer.from_pretrained(sft)
    job = {
        "sft": str(sft), "rm": str(rm), "prompts": train_prompts,
        "prompt_ids": [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in train_prompts],
        **{k: getattr(args, k) for k in ("episodes", "batch_size", "minibatch_size", "ppo_epochs", "response_length",
                                         "temperature", "learning_rate", "value_learning_rate", "kl_coef", "missing_eos_penalty", "threads", "seed")},
    }
    print(f"SFT {sft}\nRM  {rm}\nprompts {prompts_dir}: {len(train_prompts)} train, {len(eval_prompts)} held out", flush=True)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as scratch:
        for repeat in range(args.repeats):
            order = ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours")
            for trainer in order:
                workdir = Path(scratch) / f"{trainer}-{repeat}"
                workdir.mkdir()
                result = run_one(trainer, {**job, "seed": args.seed + repeat}, workdir, trl_python)
                result.update(evaluate_policy(workdir / "policy", sft, rm, eval_prompts, args))
                result.update({"trainer": trainer, "repeat": repeat, "seed": args.seed + repeat})
                runs.append(result)
                print(f"  {trainer:4s} run {repeat} (seed {args.seed + repeat}): {result['episodes_per_second']:.2f} episodes/s, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB, RM-score gain {result['rm_score_gain']:+.3f}, "
                      f"KL to SFT {result['kl_to_sft']:.2f}", flush=True)

    table = summarise(runs)
    print_table(table, args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"ppo_vs_trl-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"settings": {k: v for k, v in job.items() if k not in ("prompts", "prompt_ids")},
                               "runs": runs, "summary": table, "load_average": os.getloadavg()}, indent=2) + "\n")
    print(f"wrote {out}")


def summarise(runs: list[dict]) -> dict:
    table = {}
    for trainer in ("ours", "trl"):
        mine = [r for r in runs if r["trainer"] == trainer]
        table[trainer] = {
            key: {"median": statistics.median(r[key] for r in mine), "min": min(r[key] for r in mine), "max": max(r[key] for r in mine)}
            for key in ("episodes_per_second", "peak_rss_mb", "rm_score_gain", "kl_to_sft")
        }
    table["ratio"] = {
        "episodes_per_second": table["ours"]["episodes_per_second"]["median"] / table["trl"]["episodes_per_second"]["median"],
        "peak_rss_mb": table["ours"]["peak_rss_mb"]["median"] / table["trl"]["peak_rss_mb"]["median"],
        "rm_score_gain_difference": table["ours"]["rm_score_gain"]["median"] - table["trl"]["rm_score_gain"]["median"],
    }
    return table


def print_table(table: dict, args) -> None:
    print(f"\nPPO, {args.episodes} episodes, batch {args.batch_size}, minibatch {args.minibatch_size}, "
          f"{args.ppo_epochs} PPO epochs, response length {args.response_length}, {args.threads} threads, "
          f"{args.repeats} runs each, seeds {args.seed}-{args.seed + args.repeats - 1} (median [min-max]); "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| trainer | episodes/s | peak RSS (MB) | RM-score gain | KL to SFT |")
    print("|---|---|---|---|---|")
    for trainer, label in (("ours", "ours (pipeline.ppo)"), ("trl", "TRL 1.12.0 PPOTrainer")):
        row = table[trainer]
        cells = [f"{row[k]['median']:.2f} [{row[k]['min']:.2f}-{row[k]['max']:.2f}]"
                 for k in ("episodes_per_second", "peak_rss_mb", "rm_score_gain", "kl_to_sft")]
        print(f"| {label} | " + " | ".join(cells) + " |")
    ratio = table["ratio"]
    print(f"| ours / TRL | {ratio['episodes_per_second']:.2f}x | {ratio['peak_rss_mb']:.2f}x | "
          f"{ratio['rm_score_gain_difference']:+.3f} (difference) | |")


if __name__ == "__main__":
    main()
