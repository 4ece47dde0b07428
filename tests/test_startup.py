"""The code location loads without the heavy ML stack: every `dagster`/`rlhf` command and step starts fast."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "trl", "datasets", "accelerate", "pandas", "pandera", "great_expectations", "dvc")


def test_loading_the_definitions_imports_no_training_or_dataframe_library():
    # pipeline.evaluation.report: the evaluation report's regression check runs on every run, reused or not.
    probe = (
        "import sys, pipeline.definitions, pipeline.evaluation.report, quality_gates.reuse; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "", f"pipeline.definitions imported {completed.stdout.strip()}"
