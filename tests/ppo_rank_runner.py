"""Runs `train_ppo` on every rank of an `accelerate launch` (see tests/test_ppo_distributed.py).

    accelerate launch ... tests/ppo_rank_runner.py <sft dir> <rm dir> <prompts.json> <settings.json> <output dir>
"""

import json
import sys
from pathlib import Path

from pipeline.ppo.algorithm import train_ppo
from pipeline.settings import PpoSettings

if __name__ == "__main__":
    sft_dir, rm_dir, prompts_file, settings_file, output_dir = sys.argv[1:]
    settings = PpoSettings.model_validate_json(Path(settings_file).read_text())
    train_ppo(Path(sft_dir), Path(rm_dir), json.loads(Path(prompts_file).read_text()), Path(output_dir), settings)
