"""benchmarks/base_task_accuracy.py: its probe reads a base model's prose continuation with the rule checker."""

import json

from benchmark_scripts import load_benchmark


def _benchmark_module():
    return load_benchmark("base_task_accuracy")


def test_first_answer_stops_at_the_first_stated_answer():
    benchmark = _benchmark_module()
    assert benchmark.first_answer(" 3 plus 4 is 7. The answer is 7. What is 2 plus 2? The answer is 5.") == " 3 plus 4 is 7. The answer is 7."
    assert benchmark.first_answer(" no answer here") == " no answer here"


def test_probes_cover_every_task_type_in_the_requested_phrasings():
    from pipeline.data.tasks import EVAL_PHRASINGS, PHRASINGS, TASK_TYPES

    benchmark = _benchmark_module()
    tasks = benchmark.probe_tasks(2, EVAL_PHRASINGS, "t")
    assert len(tasks) == 2 * len(TASK_TYPES)
    held_out_stems = {PHRASINGS[t][p].split("{")[0] for t in TASK_TYPES for p in EVAL_PHRASINGS}
    assert all(any(task["prompt"].startswith(stem) for stem in held_out_stems) for task in tasks)


def test_a_short_run_prints_and_writes_one_probe_line_per_interval(tmp_path, capsys):
    benchmark = _benchmark_module()
    out = tmp_path / "curve.jsonl"
    assert benchmark.main(["--steps", "4", "--every", "2", "--per-type", "1", "--tasks-per-document", "2", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:
        for probe in ("training_phrasings", "held_out_phrasing"):
            assert 0.0 <= line[probe]["all"] <= 1.0 and "pick_kind" in line[probe]
    assert capsys.readouterr().out.count("step ") == 2
