"""Real-model path: a tiny model saved in a local directory as `base_model`, conversational SFT on
assistant turns only, and the graph from base_model to reward_model on the adapter fixtures."""

import json
from pathlib import Path

import dagster as dg
import transformers

from pipeline.settings import TinyModelSpec
from pipeline.training.chat_format import ASSISTANT, CHAT_TEMPLATE, EOS
from pipeline.training.base_model import build_tiny_llama, load_pretrained, train_tokenizer
from pipeline.data.generator import pretraining_text

FIXTURES = Path(__file__).parent / "fixtures"
SPEC = TinyModelSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def save_tiny_model(directory: Path, extra_vocab_rows: int = 0, strip_tokenizer: bool = False) -> Path:
    """A tiny Llama saved like any hub checkpoint; optionally with a bare tokenizer (no pad, eos or template)."""
    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=SPEC.vocab_size)
    model = build_tiny_llama(tokenizer, SPEC, seed=0)
    if extra_vocab_rows:  # checkpoints often pad their vocabulary beyond the tokenizer
        model.resize_token_embeddings(len(tokenizer) + extra_vocab_rows)
    if strip_tokenizer:
        tokenizer.pad_token = None
        tokenizer.eos_token = None
        tokenizer.chat_template = None
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_load_pretrained_completes_a_bare_tokenizer_and_never_shrinks_embeddings(tmp_path, monkeypatch):
    directory = save_tiny_model(tmp_path / "bare", extra_vocab_rows=64, strip_tokenizer=True)
    rows_saved = 64 + len(transformers.AutoTokenizer.from_pretrained(directory))
    seen = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, tokenizer, _ = load_pretrained(str(directory))
    assert seen == [{"revision": None, "trust_remote_code": False, "use_safetensors": True}]
    assert tokenizer.eos_token == EOS
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id == model.generation_config.pad_token_id
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.padding_side == "left"
    assert model.get_input_embeddings().weight.shape[0] == rows_saved
    assert tokenizer.encode(ASSISTANT, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(ASSISTANT)]


def test_conversational_sft_trains_on_every_assistant_turn_and_nothing_else(tmp_path):
    from trl import SFTTrainer

    from pipeline.settings import SftSettings
    from pipeline.training.sft import sft_config, to_prompt_completion

    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=SPEC.vocab_size)
    model = build_tiny_llama(tokenizer, SPEC, seed=0)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Eleven."},
    ]
    records = [{"prompt": "unused", "completion": "Eleven.", "messages": messages}]
    assert len(to_prompt_completion(tokenizer, records, "last")) == 1
    dataset = to_prompt_completion(tokenizer, records, "all")
    assert dataset["completion"] == ["Seven.", "Eleven."]
    # each rendered context is exactly what the chat template puts before that answer
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    for prompt, completion in zip(dataset["prompt"], dataset["completion"]):
        assert full.startswith(prompt + completion + tokenizer.eos_token)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(SftSettings(batch_size=2, device="cpu"), str(tmp_path), has_eval=False),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trained = {tokenizer.decode([t for t in labels if t != -100]) for labels in batch["labels"].tolist()}
    assert trained == {"Seven." + tokenizer.eos_token, "Eleven." + tokenizer.eos_token}


def test_graph_runs_on_fixtures_with_a_local_base_model(tmp_path, tiny_run_config, artifacts_root, dagster_instance):
    from assets.base import base_model
    from assets.data import eval_prompts, ppo_prompts, preference_data, sft_data
    from pipeline.data.records import load_data
    from assets.reward import reward_model
    from assets.sft import sft_checkpoint
    from pipeline.settings import SourceSettings
    from pipeline.data.sources import load_source
    from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource

    model_dir = save_tiny_model(tmp_path / "local-model")
    ops = tiny_run_config["ops"]
    run_config = {"ops": {
        "base_model": {"config": {"model_name_or_path": str(model_dir)}},
        "sft_data": {"config": {"source": str(FIXTURES / "chat_messages.jsonl"), "format": "messages"}},
        "preference_data": {"config": {"source": str(FIXTURES / "hh_rlhf.jsonl"), "format": "hh_rlhf"}},
        "ppo_prompts": {"config": {"source": str(FIXTURES / "tldr_sft.jsonl"), "format": "tldr"}},
        "eval_prompts": {"config": {"source": str(FIXTURES / "ultrafeedback_binarized.jsonl"), "format": "ultrafeedback"}},
        "sft_checkpoint": ops["sft_checkpoint"],
        "reward_model": ops["reward_model"],
    }}
    result = dg.materialize(
        [base_model, sft_data, preference_data, ppo_prompts, eval_prompts, sft_checkpoint, reward_model],
        instance=dagster_instance,
        run_config=run_config,
        resources={"artifacts": ArtifactStoreResource(root=str(artifacts_root)), "io_manager": ArtifactIOManager()},
    )
    assert result.success

    def artifact(key: str) -> Path:
        event = dagster_instance.get_latest_materialization_event(dg.AssetKey(key))
        return Path(event.asset_materialization.metadata["artifact_path"].value)

    assert (artifact("base_model") / "model_name.txt").read_text().strip() == str(model_dir)
    expected_pairs = load_source(SourceSettings(source=str(FIXTURES / "hh_rlhf.jsonl"), format="hh_rlhf"), "preference").records
    assert load_data(artifact("preference_data")) == expected_pairs
    preference_meta = dagster_instance.get_latest_materialization_event(dg.AssetKey("preference_data")).asset_materialization.metadata
    assert preference_meta["source"].value == f"{FIXTURES / 'hh_rlhf.jsonl'} (hh_rlhf)"
    assert [r["prompt"] for r in load_data(artifact("eval_prompts"))][0] == "Write a haiku about autumn rain."
    assert len(load_data(artifact("ppo_prompts"))) == 3
    sft_eval = json.loads((artifact("sft_checkpoint") / "sft_eval.json").read_text())
    assert sft_eval["n_train_examples"] > sft_eval["n_train"], "multi-turn conversations train on each assistant turn"
    rm_eval = json.loads((artifact("reward_model") / "rm_eval.json").read_text())
    assert rm_eval["n_train"] + rm_eval["n_held_out"] == 6


def test_smollm2_hh_profile_is_valid_run_config_for_the_job():
    """The real-model profile is not run in CI, but its config must stay valid as assets change."""
    import yaml

    from pipeline.definitions import defs

    profile = yaml.safe_load((Path(__file__).parents[1] / "pipeline" / "profiles" / "smollm2_hh.yaml").read_text())
    job = defs.resolve_job_def("rlhf_pipeline")
    present = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"base_model", "sft_data", "preference_data", "sft_checkpoint", "reward_model"} <= set(profile["ops"])
    ops = {name: op for name, op in profile["ops"].items() if name in present}
    dg.validate_run_config(job, {"ops": ops})
