"""How long the evaluation stage takes with its default settings (48 eval prompts, 3 models).

    .venv/bin/python -m benchmarks.bench_evaluation                      # default-size random models
    .venv/bin/python -m benchmarks.bench_evaluation --artifacts-root artifacts   # the latest real artifacts

With no artifacts root it builds models of the default tiny shape with random weights: they never
emit EOS, so every answer runs to max_new_tokens and the time is an upper bound for that shape.
Prints wall time and this process's CPU time (the CPU may be shared: CPU time is the steadier figure).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def latest(root: Path, asset: str) -> Path | None:
    candidates = sorted(p for p in (root / asset).glob("2*") if p.is_dir()) if (root / asset).is_dir() else []
    return candidates[-1] if candidates else None


def random_default_models(out: Path) -> dict[str, Path]:
    from transformers import AutoModelForSequenceClassification

    from pipeline.data.generator import pretraining_text
    from pipeline.settings import TinyModelSpec
    from pipeline.training.base_model import build_tiny_llama, train_tokenizer

    spec = TinyModelSpec()
    tokenizer = train_tokenizer(pretraining_text(300, 0), spec.vocab_size)
    dirs = {}
    for seed, name in enumerate(("base", "sft", "ppo")):
        dirs[name] = out / name
        build_tiny_llama(tokenizer, spec, seed).save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    reward = AutoModelForSequenceClassification.from_pretrained(dirs["sft"], num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    dirs["reward_model"] = out / "reward_model"
    reward.save_pretrained(dirs["reward_model"])
    tokenizer.save_pretrained(dirs["reward_model"])
    return dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-root", type=Path, help="use the latest base/sft/ppo/rm/eval_prompts artifacts here")
    parser.add_argument("--cpu-threads", type=int, default=1, help="EvaluationSettings.cpu_threads (0: torch's default)")
    args = parser.parse_args()

    from pipeline.data.generator import prompt_records
    from pipeline.data.records import load_data
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.evaluation.judges import HeuristicJudge
    from pipeline.evaluation.report import read_training_metrics, write_report
    from pipeline.settings import EvaluationSettings
    from pipeline.storage.contract import PPO_METRICS_FILE

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        scratch = Path(scratch)
        if args.artifacts_root:
            root = args.artifacts_root
            dirs = {"base": latest(root, "base_model"), "sft": latest(root, "sft_checkpoint"),
                    "ppo": latest(root, "ppo_policy") or latest(root, "sft_checkpoint"),
                    "reward_model": latest(root, "reward_model")}
            missing = [k for k, v in dirs.items() if v is None]
            if missing:
                raise SystemExit(f"no artifacts for {missing} under {root}")
            prompts_dir = latest(root, "eval_prompts")
            records = load_data(prompts_dir) if prompts_dir else prompt_records(48, 0, "eval")
            source = f"latest artifacts under {root}"
        else:
            dirs = random_default_models(scratch / "models")
            records = prompt_records(48, 0, "eval")
            source = "random default-size models (answers run to max_new_tokens)"
        settings = EvaluationSettings(device="cpu", cpu_threads=args.cpu_threads)
        wall, cpu = time.perf_counter(), time.process_time()
        result = evaluate({k: dirs[k] for k in ("base", "sft", "ppo")}, dirs["reward_model"], records, settings,
                          HeuristicJudge(), log=lambda message: print(f"  {time.perf_counter() - wall:6.1f}s {message}"))
        rows, note = read_training_metrics(dirs["ppo"] / PPO_METRICS_FILE)
        write_report(result, scratch / "report", rows, note, None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "models": source, "n_prompts": len(records), "cpu_threads": args.cpu_threads,
        "wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2),
        "load_average_1min": os.getloadavg()[0],
        "mean_length": {m: round(result.models[m].mean_length, 1) for m in ("base", "sft", "ppo")},
    }, indent=2))


if __name__ == "__main__":
    main()
