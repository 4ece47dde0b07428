"""When does the default base model start reading the prompt? Task accuracy through pretraining.

The verifiable tasks (add, sort, reverse, last word, ...) can only be answered by reading numbers
and words from the prompt. This benchmark pretrains the default tiny model exactly as the
`base_model` asset does (same tokenizer, model, data and loop, `pipeline.training.base_model`) and,
every `--every` steps, asks it to continue fresh task questions as plain prose: the training
phrasings (which pretraining text contains, with other numbers and words) and the held-out
evaluation phrasing (which it never contains). Greedy continuations are read by the rule checker.

    .venv/bin/python benchmarks/base_task_accuracy.py                      # the default recipe
    .venv/bin/python benchmarks/base_task_accuracy.py --steps 1000 --tasks-per-document 24

It prints one line per probe (step, training wall time so far, loss, accuracy per task type) and
writes them as JSON lines with `--out`. Training time excludes the probes. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from pipeline.data.generator import pretraining_text
from pipeline.data.tasks import EVAL_PHRASINGS, TASK_TYPES, TRAIN_PHRASINGS, check_answer, make_task
from pipeline.settings import PretrainSettings, TinyModelSpec
from pipeline.training.base_model import build_tiny_llama, pretrain, train_tokenizer


def probe_tasks(per_type: int, phrasings: tuple[int, ...], seed: str) -> list[dict]:
    rng = random.Random(seed)
    return [make_task(task_type, rng, rng.choice(phrasings)) for task_type in TASK_TYPES for _ in range(per_type)]


def first_answer(continuation: str) -> str:
    """The continuation up to the end of its first "The answer is ..." sentence: a base model rambles on."""
    start = continuation.lower().find("the answer is")
    if start < 0:
        return continuation
    end = continuation.find(".", start)
    return continuation if end < 0 else continuation[: end + 1]


@torch.no_grad()
def task_accuracy(model, tokenizer, tasks: list[dict], max_new_tokens: int = 48) -> dict[str, float]:
    """Greedy prose continuation of each task question; the share the checker accepts, per type and overall."""
    was_training = model.training
    model.eval()
    encoded = tokenizer([task["prompt"] for task in tasks], return_tensors="pt", padding=True)
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    continuations = tokenizer.batch_decode(output[:, encoded.input_ids.shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    by_type: dict[str, list[bool]] = {}
    for task, continuation in zip(tasks, continuations):
        by_type.setdefault(task["task"]["type"], []).append(check_answer(task["task"], first_answer(continuation)))
    accuracy = {task_type: sum(oks) / len(oks) for task_type, oks in by_type.items()}
    accuracy["all"] = sum(sum(oks) for oks in by_type.values()) / len(tasks)
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=PretrainSettings().pretrain_steps)
    parser.add_argument("--tasks-per-document", type=int, default=PretrainSettings().pretrain_tasks_per_document)
    parser.add_argument("--learning-rate", type=float, default=PretrainSettings().pretrain_learning_rate)
    parser.add_argument("--layers", type=int, default=TinyModelSpec().num_layers, help="transformer layers of the tiny model")
    parser.add_argument("--hidden-size", type=int, default=TinyModelSpec().hidden_size,
                        help="width of the tiny model (the MLP stays 3x as wide)")
    parser.add_argument("--every", type=int, default=100, help="probe every N steps (and at the end)")
    parser.add_argument("--per-type", type=int, default=8, help="probe questions per task type and phrasing set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the probe lines here as JSON lines")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = TinyModelSpec(num_layers=args.layers, hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size)
    settings = PretrainSettings(
        pretrain_steps=args.steps, pretrain_tasks_per_document=args.tasks_per_document,
        pretrain_learning_rate=args.learning_rate, seed=args.seed,
    )
    documents = pretraining_text(settings.pretrain_documents, settings.seed, settings.pretrain_tasks_per_document)
    tokenizer = train_tokenizer(documents, spec.vocab_size)
    model = build_tiny_llama(tokenizer, spec, settings.seed)
    probes = {
        "training_phrasings": probe_tasks(args.per_type, TRAIN_PHRASINGS, f"probe-train:{args.seed}"),
        "held_out_phrasing": probe_tasks(args.per_type, EVAL_PHRASINGS, f"probe-eval:{args.seed}"),
    }
    lines: list[dict] = []
    clock = {"train_s": 0.0, "since": time.perf_counter()}

    def on_progress(step: int, loss: float) -> None:
        done = step + 1
        if done % args.every and done != args.steps:
            return
        clock["train_s"] += time.perf_counter() - clock["since"]
        line = {"step": done, "train_s": round(clock["train_s"], 1), "loss": round(loss, 3)}
        line.update({name: task_accuracy(model, tokenizer, tasks) for name, tasks in probes.items()})
        lines.append(line)
        per_type = " ".join(f"{k}={v:.2f}" for k, v in line["training_phrasings"].items())
        print(f"step {done:5d}  train {line['train_s']:6.0f}s  loss {loss:.3f}  training phrasings: {per_type}  "
              f"held-out phrasing: {line['held_out_phrasing']['all']:.2f}", flush=True)
        clock["since"] = time.perf_counter()

    pretrain(model, tokenizer, documents, settings, torch.device("cpu"), on_progress)
    if args.out:
        args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
