"""How the flaws of the demonstrations shape the SFT policy, before any PPO.

    .venv/bin/python benchmarks/rlhf_effect.py --seeds 0 --keep /tmp/runs      # once: a base model to start from
    .venv/bin/python benchmarks/sft_flaws.py /tmp/runs/seed0                     # the default's demonstrations
    .venv/bin/python benchmarks/sft_flaws.py /tmp/runs/seed0 --n-records 1200 \\
        --task-flaws wrong padded vague repetitive --explanation-flaws padded vague repetitive

From the base model of a kept run (a `--keep` directory of rlhf_effect.py) it trains SFT, with the
default SFT settings and the run's seed, on demonstrations the generator makes with the given
number, flawed share and flaws. Then the SFT policy answers fresh tasks in the held-out evaluation
phrasing (4 samples at temperature 1 and once greedily, as in reward_ceiling.py) and every concept
in both held-out explanation templates (4 samples each). One line per call:

- sampled accuracy, and where the sampled answers fall: "no result" (no single final answer) is
  what PPO removes; "right when answered" is how often an answer that states a result is right,
  which PPO does not raise (reward_ceiling.py), so the two bound what PPO can add;
- greedy accuracy, and concept match of the sampled explanations (the report's measure).

A benchmark, not a test (about 1.5 minutes a call on 2 CPU cores); each call appends its line to
benchmarks/results/sft_flaws.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark whose probe this one shares
from reward_ceiling import (  # noqa: E402
    RESULTS_DIR, answer_kinds, answer_shares, newest_artifact, probe_tasks, run_config_entry,
)


def concept_match(model_dir: Path, samples: int, seed: int) -> float:
    """Share of sampled answers to the held-out explanation prompts that are about the concept asked."""
    from pipeline.data.generator import EVAL_TEMPLATES
    from pipeline.data.glossary import GLOSSARY
    from pipeline.evaluation.evaluate import concept_matched
    from pipeline.training.device import select_device
    from pipeline.training.generation import generate, load_causal_lm

    model, tokenizer = load_causal_lm(model_dir, select_device("auto"))
    asked = [{"prompt": template.format(c=concept.name), "kind": "explanation", "concept": concept.name}
             for concept in GLOSSARY for template in EVAL_TEMPLATES]
    answers = generate(model, tokenizer, [r["prompt"] for r in asked for _ in range(samples)], 96, 1.0,
                       batch_size=128, seed=seed)
    matched = [concept_matched(asked[index // samples], answer.response) for index, answer in enumerate(answers)]
    return sum(matched) / len(matched)


def measure(run_dir: Path, n_records: int, flawed_fraction: float, flaws_by_kind: dict[str, list[str]],
            per_type: int, samples: int, work: Path, epochs: float) -> dict[str, Any]:
    from assets.data import SftDataConfig
    from pipeline.data.generator import sft_records
    from pipeline.settings import SftSettings
    from pipeline.training.sft import train_sft

    seed = run_config_entry(run_dir, "sft_data").get("seed", 0)
    records = sft_records(n_records, seed, SftDataConfig().explanation_fraction, flawed_fraction, flaws_by_kind)
    metrics = train_sft(newest_artifact(run_dir / "artifacts", "base_model"), records, work / "sft",
                        SftSettings(seed=seed, epochs=epochs))
    tasks = probe_tasks(per_type, seed)
    sampled = answer_kinds(work / "sft", tasks, samples, 1.0, 64, seed)
    greedy = answer_kinds(work / "sft", tasks, 1, 0.0, 64, seed)
    return {
        "run": str(run_dir), "seed": seed, "n_records": n_records, "flawed_fraction": flawed_fraction,
        "flaws": flaws_by_kind, "demonstrations": dict(Counter(r["flaw"] or "good" for r in records)),
        "epochs": epochs, "sft_steps": metrics["total_steps"],
        "sft_seconds": metrics["train_seconds_this_run"], "held_out_loss": metrics["held_out_loss"], **answer_shares(sampled),
        "greedy_accuracy": answer_shares(greedy)["accuracy"], "concept_match": concept_match(work / "sft", samples, seed),
    }


def main(argv: list[str] | None = None) -> int:
    from assets.data import SftDataConfig
    from pipeline.settings import SftSettings

    default = SftDataConfig()  # sft_data's defaults
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a kept run of rlhf_effect.py (run_config.yaml + artifacts/)")
    parser.add_argument("--n-records", type=int, default=default.n_records, help="demonstrations (sft_data's n_records)")
    parser.add_argument("--flawed-fraction", type=float, default=default.flawed_fraction)
    parser.add_argument("--task-flaws", nargs="+", default=default.task_flaws)
    parser.add_argument("--explanation-flaws", nargs="+", default=default.explanation_flaws)
    parser.add_argument("--epochs", type=float, default=SftSettings().epochs, help="SFT epochs")
    parser.add_argument("--per-type", type=int, default=40, help="probe tasks per task type (held-out phrasing)")
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per probe prompt")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "sft_flaws.jsonl")
    args = parser.parse_args(argv)
    flaws_by_kind = {"verifiable": args.task_flaws, "explanation": args.explanation_flaws}
    with tempfile.TemporaryDirectory(prefix="sft-flaws-") as work:
        result = measure(args.run, args.n_records, args.flawed_fraction, flaws_by_kind, args.per_type, args.samples,
                         Path(work), args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        out.write(json.dumps(result) + "\n")
    print(f"{result['n_records']} demonstrations, {result['epochs']:g} epochs ({result['sft_steps']} steps, "
          f"{result['sft_seconds']:.0f} s), {args.flawed_fraction:.0%} flawed, tasks {args.task_flaws}, "
          f"explanations {args.explanation_flaws}: sampled {result['accuracy']:.3f}, no result {result['no_result']:.2f}, "
          f"right when answered {result['right_when_answered']:.2f}, greedy {result['greedy_accuracy']:.3f}, "
          f"concept match {result['concept_match']:.2f}, held-out loss {result['held_out_loss']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
