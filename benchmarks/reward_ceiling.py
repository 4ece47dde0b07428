"""How much of what PPO could gain does the reward model leave on the table? PPO against the RM vs the checker.

    .venv/bin/python benchmarks/rlhf_effect.py --keep /tmp/runs             # once: runs to start from
    .venv/bin/python benchmarks/reward_ceiling.py /tmp/runs/seed0 /tmp/runs/seed1 ...
    .venv/bin/python benchmarks/reward_ceiling.py /tmp/runs/seed0 --set learning_rate=3e-4 --set total_episodes=2048

Each argument is a kept run (a `--keep` directory of rlhf_effect.py: `run_config.yaml` and
`artifacts/`). From that run's SFT checkpoint, on its PPO prompts, with its PPO settings (and any
`--set` overrides), PPO is trained twice:

- `reward model`: the reward is the run's reward model, as in the pipeline;
- `checker`: the same, except that on task prompts the rule checker settles correctness: the RM
  score is raised to at least +1 when the checker accepts the answer and lowered to at most -1
  when it does not. It is the reward a perfect verifier of the tasks would give, a ceiling for
  what a better reward model could buy. This is a diagnostic: the pipeline never trains on the
  checker, which stays the evaluation's independent judge.

SFT and both PPO policies then answer a fresh set of task prompts in the held-out evaluation
phrasing (none of it is trained on), sampled at temperature 1 several times per prompt and
greedily. The table gives SFT's sampled checker accuracy and each PPO's gain over it with a
bootstrap 95% interval over prompts, then where the sampled answers fall: the share with no
single final answer ("no result": vague, repetitive, an explanation, cut off) and how often an
answer that states one result states the right one ("right when answered"). If the
checker-trained PPO gains little more than the RM-trained one, the reward model is not what limits
PPO's gain; the two shares say what does. A benchmark, not a test; results go to
benchmarks/results/reward_ceiling.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
REWARDS = ("reward model", "checker")
CHECKER_FLOOR = 1.0  # an accepted answer scores at least this; a rejected one at most minus this


def newest_artifact(artifacts: Path, asset: str) -> Path:
    found = sorted(p for p in (artifacts / asset).glob("[0-9]*") if p.is_dir())
    if not found:
        raise SystemExit(f"{artifacts / asset}: no artifact; is {artifacts.parent} a kept run of rlhf_effect.py?")
    return found[-1]


def run_config_entry(run_dir: Path, asset: str) -> dict[str, Any]:
    """The `config` of one asset in the run's run config (empty when the run or the entry has none)."""
    config_path = run_dir / "run_config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    return (((config or {}).get("ops") or {}).get(asset) or {}).get("config") or {}


def ppo_settings(run_dir: Path, overrides: dict[str, str]):
    """The run's PPO settings (its run config's `ppo_policy` entry over the defaults), with overrides."""
    from pipeline.settings import PpoSettings

    entry = run_config_entry(run_dir, "ppo_policy")
    values = {k: v for k, v in entry.items() if k in PpoSettings.model_fields}
    return PpoSettings.model_validate({**values, **overrides})


def checker_reward(rm_score: float, task: dict[str, Any] | None, response: str) -> float:
    """The RM score, with the rule checker deciding correctness on task prompts (see the module docstring)."""
    from pipeline.data.tasks import check_answer

    if task is None:
        return rm_score
    if check_answer(task, response):
        return max(rm_score, CHECKER_FLOOR)
    return min(rm_score, -CHECKER_FLOOR)


@contextlib.contextmanager
def checker_rewarded_ppo(task_of_prompt: dict[str, dict[str, Any] | None], tokenizer) -> Iterator[None]:
    """Inside: `train_ppo` scores each rollout with `checker_reward` instead of the RM score alone.

    PPO's loop calls three names of `pipeline.ppo.algorithm` once per step, in this order:
    `prompts_for_step` (the step's prompts), `sample_responses` (the rollout, rows in prompt order)
    and `reward_scores` (one RM score per row). They are wrapped for the duration and restored after.
    """
    import torch

    import pipeline.ppo.algorithm as ppo
    from pipeline.training.generation import to_generation

    originals = {name: getattr(ppo, name) for name in ("prompts_for_step", "sample_responses", "reward_scores")}
    step: dict[str, Any] = {}

    def prompts_for_step(*args, **kwargs):
        step["prompts"] = originals["prompts_for_step"](*args, **kwargs)
        return step["prompts"]

    def sample_responses(*args, **kwargs):
        step["rollout"] = originals["sample_responses"](*args, **kwargs)
        return step["rollout"]

    def reward_scores(reward_model, packed):
        scores = originals["reward_scores"](reward_model, packed)
        rollout, prompts = step["rollout"], step["prompts"]
        if len(prompts) != rollout.response_ids.shape[0]:  # several processes each sample a share of the prompts
            raise RuntimeError("the checker reward is wired for one training process; run without `accelerate launch`")
        rewards = [
            checker_reward(score, task_of_prompt[prompt], to_generation(tokenizer, prompt, tokens).response)
            for score, prompt, tokens in zip(scores.tolist(), prompts, rollout.response_ids.tolist())
        ]
        return torch.tensor(rewards, dtype=scores.dtype, device=scores.device)

    for name, wrapper in (("prompts_for_step", prompts_for_step), ("sample_responses", sample_responses),
                          ("reward_scores", reward_scores)):
        setattr(ppo, name, wrapper)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(ppo, name, original)


def probe_tasks(per_type: int, seed: int) -> list[dict[str, Any]]:
    """`per_type` tasks of every type in the held-out evaluation phrasing."""
    import random

    from pipeline.data.tasks import EVAL_PHRASINGS, TASK_TYPES, make_task

    rng = random.Random(f"reward-ceiling:{seed}")
    return [make_task(t, rng, rng.choice(EVAL_PHRASINGS)) for t in TASK_TYPES for _ in range(per_type)]


def answer_kind(task: dict[str, Any], response: str) -> str:
    """`right`, `wrong` (one final answer, not the expected one) or `no result` (none, or several)."""
    from pipeline.data.tasks import check_answer

    if check_answer(task, response):
        return "right"
    return "wrong" if response.lower().count("the answer is") == 1 else "no result"


def answer_kinds(model_dir: Path, tasks: list[dict[str, Any]], samples: int, temperature: float,
                 max_new_tokens: int, seed: int) -> list[list[str]]:
    """For each task, the kind of each of the model's `samples` answers."""
    from pipeline.training.device import select_device
    from pipeline.training.generation import generate, load_causal_lm

    model, tokenizer = load_causal_lm(model_dir, select_device("auto"))
    prompts = [task["prompt"] for task in tasks for _ in range(samples)]
    answers = generate(model, tokenizer, prompts, max_new_tokens, temperature, batch_size=128, seed=seed)
    kinds: list[list[str]] = [[] for _ in tasks]
    for index, answer in enumerate(answers):
        kinds[index // samples].append(answer_kind(tasks[index // samples]["task"], answer.response))
    return kinds


def answer_shares(kinds: list[list[str]]) -> dict[str, float]:
    """Of all the answers (`kinds` per task): the share right, the share without a result, and how often an
    answer that states one result states the right one (right / (right + wrong); 0 when none does)."""
    counts = Counter(kind for per_task in kinds for kind in per_task)
    return {
        "accuracy": counts["right"] / sum(counts.values()),
        "no_result": counts["no result"] / sum(counts.values()),
        "right_when_answered": counts["right"] / max(counts["right"] + counts["wrong"], 1),
    }


def gain(ppo: list[float], sft: list[float], n_resamples: int, seed: int) -> dict[str, Any]:
    from pipeline.evaluation.metrics import bootstrap_mean_ci

    differences = [p - s for p, s in zip(ppo, sft)]
    return {"difference": sum(differences) / len(differences),
            "ci95": list(bootstrap_mean_ci(differences, n_resamples, seed))}


def measure_run(run_dir: Path, overrides: dict[str, str], per_type: int, samples: int, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from pipeline.data.records import load_data
    from pipeline.ppo.algorithm import train_ppo

    artifacts = run_dir / "artifacts"
    sft_dir, rm_dir = newest_artifact(artifacts, "sft_checkpoint"), newest_artifact(artifacts, "reward_model")
    records = load_data(newest_artifact(artifacts, "ppo_prompts"))
    prompts = [r["prompt"] for r in records]
    settings = ppo_settings(run_dir, overrides)
    policies: dict[str, Path] = {}
    kl: dict[str, float] = {}
    for reward in REWARDS:
        out = work / reward.replace(" ", "_")
        with (checker_rewarded_ppo({r["prompt"]: r.get("task") for r in records}, AutoTokenizer.from_pretrained(sft_dir))
              if reward == "checker" else contextlib.nullcontext()):
            summary = train_ppo(sft_dir, rm_dir, prompts, out, settings)
        policies[reward], kl[reward] = out, summary.get("kl_to_sft")
    tasks = probe_tasks(per_type, settings.seed)
    result: dict[str, Any] = {"run": str(run_dir), "seed": settings.seed, "n_tasks": len(tasks), "samples": samples,
                              "ppo_kl_to_sft": kl, "settings_overrides": overrides}
    for decoding, temperature, n in (("sampled", 1.0, samples), ("greedy", 0.0, 1)):
        kinds = {name: answer_kinds(directory, tasks, n, temperature, settings.max_new_tokens, settings.seed)
                 for name, directory in (("sft", sft_dir), *policies.items())}
        correct = {name: [k.count("right") / n for k in per_task] for name, per_task in kinds.items()}
        counts = {name: Counter(k for per_task in per_model for k in per_task) for name, per_model in kinds.items()}
        result[decoding] = {
            "accuracy": {name: sum(values) / len(values) for name, values in correct.items()},
            "accuracy_when_answered": {name: answer_shares(k)["right_when_answered"] for name, k in kinds.items()},
            "answer_kinds": {name: dict(c) for name, c in counts.items()},
            "gain_over_sft": {reward: gain(correct[reward], correct["sft"], 2000, settings.seed) for reward in REWARDS},
        }
    return result


def table(results: list[dict[str, Any]]) -> str:
    """One row per run: sampled accuracy and gains, the answers without a result, accuracy when answered, greedy, KL."""
    header = ("| run | seed | SFT sampled | PPO (RM) - SFT [CI] | PPO (checker) - SFT [CI] | no result SFT / RM / checker "
              "| right when answered SFT / RM / checker | greedy SFT / RM / checker | KL RM / checker |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    names = ("sft", *REWARDS)
    for r in results:
        sampled, greedy, kl = r["sampled"], r["greedy"], r["ppo_kl_to_sft"]
        gains = [sampled["gain_over_sft"][w] for w in REWARDS]
        cells = [f"{g['difference']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]" for g in gains]
        total = r["n_tasks"] * r["samples"]
        no_result = " / ".join(f"{sampled['answer_kinds'][m].get('no result', 0) / total:.2f}" for m in names)
        answered = " / ".join(f"{sampled['accuracy_when_answered'][m]:.2f}" for m in names)
        greedy_accuracy = " / ".join(f"{greedy['accuracy'][m]:.3f}" for m in names)
        lines.append(
            f"| {Path(r['run']).name} | {r['seed']} | {sampled['accuracy']['sft']:.3f} | {cells[0]} | {cells[1]} | "
            f"{no_result} | {answered} | {greedy_accuracy} | {kl['reward model']:.2f} / {kl['checker']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="kept runs of rlhf_effect.py (run_config.yaml + artifacts/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a PPO setting of every run, e.g. --set total_episodes=2048")
    parser.add_argument("--per-type", type=int, default=40, help="probe tasks per task type (held-out phrasing)")
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per probe task")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "reward_ceiling.json")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.overrides):
        parser.error("--set takes FIELD=VALUE, e.g. --set total_episodes=2048")
    overrides = dict(item.split("=", 1) for item in args.overrides)
    results = []
    for run_dir in args.runs:
        with tempfile.TemporaryDirectory(prefix="reward-ceiling-") as work:
            results.append(measure_run(run_dir, overrides, args.per_type, args.samples, Path(work)))
        print(json.dumps(results[-1]["sampled"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
