"""The artifact contract: what an asset's artifact directory holds and what its materialization records.

Every module that writes or reads an artifact file, or a materialization's metadata, names it
through these constants; none spells the strings itself. How to find an asset's latest artifact
from the Dagster instance is `pipeline.orchestration.materializations` (it needs dagster; this
module does not).

Artifacts live at `<artifacts root>/<asset>/<UTC stamp>-<hash prefix>/` (`pipeline.storage.artifacts`),
mirrored for DVC to `<artifacts root>/<asset>/current/` (`pipeline.storage.dvc`).
"""

from __future__ import annotations

# --- files in an artifact directory, by asset --------------------------------------------------

# data assets (sft_data, preference_data, ppo_prompts, eval_prompts)
DATA_FILE = "data.jsonl"  # the records, one JSON object per line (row N = line N)
STATS_FILE = "stats.json"
# sft_data, preference_data, ppo_prompts with `drop_eval_leaks` / `drop_duplicates`: the rows removed
# from the data, one JSON object per line with its reason and what it matched
DROPPED_FILE = "dropped.jsonl"

# model assets (base_model, sft_checkpoint, reward_model, ppo_policy): HF `save_pretrained` directories
MODEL_CARD_FILE = "README.md"  # the HF model card, with the materialization's lineage
MODEL_NAME_FILE = "model_name.txt"  # base_model: which model it is
SFT_EVAL_FILE = "sft_eval.json"
SFT_CURVES_FILE = "loss_curves.png"  # training and held-out loss against the step
RM_EVAL_FILE = "rm_eval.json"
PPO_METRICS_FILE = "ppo_train_metrics.jsonl"  # one line per PPO step
PPO_SUMMARY_FILE = "ppo_summary.json"  # the SFT-vs-PPO evaluation on held-out prompts, and run totals
PPO_CURVES_FILE = "training_curves.png"
VALUE_MODEL_DIR = "value_model"  # ppo_policy: the value model, an HF directory inside the policy's
# base_model (when pretrained here), sft_checkpoint, reward_model, ppo_policy: TensorBoard event files
TENSORBOARD_DIR = "tensorboard"

# base_probe
PROBE_FILE = "generation_probe.jsonl"
PROBE_REPORT = "base_probe.md"

# evaluation_report
EVAL_JSON = "eval.json"
REPORT_MD = "final_eval.md"
REPORT_HTML = "report.html"
ANSWERS_FILE = "answers.jsonl"
JUDGEMENTS_FILE = "judgements.jsonl"
PLOTS_DIR = "plots"
TRAINING_CURVES_PNG = f"{PLOTS_DIR}/ppo_training_curves.png"
LENGTH_HISTOGRAMS_PNG = f"{PLOTS_DIR}/length_histograms.png"
WIN_RATES_PNG = f"{PLOTS_DIR}/win_rates.png"

# beside the version directories of an asset: the version DVC tracks
CURRENT_DIR_NAME = "current"

# --- materialization metadata keys ---------------------------------------------------------------

ARTIFACT_PATH_KEY = "artifact_path"  # the artifact directory
CONTENT_HASH_KEY = "content_hash"  # sha256 of its files; also the asset's data version
SIZE_BYTES_KEY = "size_bytes"
CODE_VERSION_KEY = "code_version"
GIT_COMMIT_KEY = "git_commit"
GIT_DIRTY_KEY = "git_dirty"
CONFIG_HASH_KEY = "config_hash"
CONFIG_KEY = "config"
DVC_STAGE_KEY = "dvc_stage"
DVC_OUT_KEY = "dvc_out"
DVC_MD5_KEY = "dvc_md5"
MLFLOW_RUN_ID_KEY = "mlflow_run_id"  # with MLFLOW_TRACKING_URI set: the MLflow run of this stage
MLFLOW_EXPERIMENT_KEY = "mlflow_experiment"
REUSED_FROM_RUN_KEY = "reused_from_run"  # on a reused materialization: the run that computed the artifact

# data assets that drop eval leaks or duplicates: how many rows they removed, in all and by reason
N_DROPPED_KEY = "n_dropped"
DROPPED_BY_REASON_KEY = "dropped_by_reason"

# Written by Dagster on every materialization event (dagster._core.definitions.data_version).
DATA_VERSION_TAG = "dagster/data_version"
