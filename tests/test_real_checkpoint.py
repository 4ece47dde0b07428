"""A real pretrained checkpoint's quirks, on stories260K (tests/fixtures/stories260K, MIT; see its README).

It has no pad token and no chat template, a SentencePiece vocabulary of 512 with byte fallback and a
context window of 512 positions: what `load_pretrained` must complete, and what every stage that
encodes a prompt must fit into.
"""

from pathlib import Path

import pytest
import torch

from pipeline.training.base_model import load_pretrained
from pipeline.training.chat_format import ASSISTANT, CHAT_TEMPLATE, USER, render_prompt
from pipeline.training.context_window import (
    MIN_PROMPT_TOKENS,
    context_length,
    count_over_budget,
    fit_max_length,
    prompt_budget,
    rendered_prompt_lengths,
)

STORIES260K = Path(__file__).resolve().parent / "fixtures" / "stories260K"


@pytest.fixture(scope="module")
def stories():
    return load_pretrained(str(STORIES260K))


def test_the_fixture_is_the_bare_checkpoint_users_bring():
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(STORIES260K)
    assert tokenizer.pad_token is None and not tokenizer.chat_template and len(tokenizer) == 512
    assert context_length(AutoConfig.from_pretrained(STORIES260K)) == 512
    assert "MIT" in (STORIES260K / "README.md").read_text() and (STORIES260K / "LICENSE").is_file()


def test_pad_token_and_chat_template_are_added_embeddings_grown_and_each_change_said(stories):
    model, tokenizer, added = stories
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id == model.generation_config.pad_token_id
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.padding_side == "left"
    for marker in (USER, ASSISTANT):  # one token each, not spelled out in byte pieces
        assert tokenizer.encode(marker, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(marker)]
    assert len(tokenizer) == 515 == model.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    assert tokenizer.eos_token == "</s>"  # it had one: kept
    said = "\n".join(added)
    assert "pad token" in said and "the tokenizer had none" in said
    assert "chat template" in said
    assert "from 512 to 515 rows" in said
    assert not any("eos token" in change for change in added)


def test_a_complete_checkpoint_reports_no_changes(stories, tmp_path):
    model, tokenizer, _ = stories
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    _, _, added = load_pretrained(str(tmp_path))
    assert added == []


def test_byte_fallback_spells_out_text_the_vocabulary_lacks(stories):
    _, tokenizer, _ = stories
    text = "Explain PPO: naïve 中文 ✓"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids
    assert "<0xE4>" in tokenizer.convert_ids_to_tokens(ids)
    assert tokenizer.decode(ids) == text
    rendered = render_prompt(tokenizer, text)
    assert rendered.endswith(f"{ASSISTANT}\n") and text in tokenizer.decode(tokenizer.encode(rendered, add_special_tokens=False))


def test_prompt_budget_leaves_room_for_the_answer_and_refuses_an_answer_longer_than_the_window():
    assert prompt_budget(512, 96) == 416
    assert prompt_budget(None, 96) is None
    with pytest.raises(ValueError, match="lower max_new_tokens to at most 504"):
        prompt_budget(512, 512 - MIN_PROMPT_TOKENS + 1)
    assert fit_max_length(1024, 512) == 512 and fit_max_length(256, 512) == 256 and fit_max_length(256, None) == 256


def test_over_long_prompts_are_cut_from_the_left_and_counted(stories):
    from pipeline.ppo.rollout import encode_prompts

    _, tokenizer, _ = stories
    short = "What is a reward model?"
    long = "Once upon a time there was a long story. " * 60 + "What is a reward model?"
    budget = 64
    lengths = rendered_prompt_lengths(tokenizer, [short, long])
    assert lengths[0] < budget < lengths[1]
    assert count_over_budget(tokenizer, [short, long, long], budget) == 2
    assert count_over_budget(tokenizer, [short, long], None) == 0

    batch = encode_prompts(tokenizer, [short, long], torch.device("cpu"), max_prompt_tokens=budget)
    assert batch.input_ids.shape == (2, budget)
    full = tokenizer(render_prompt(tokenizer, long), add_special_tokens=False)["input_ids"]
    assert batch.input_ids[1].tolist() == full[-budget:]  # the end survives: the question and the assistant header
    assert batch.input_ids[1, -1].item() == full[-1]
    assert batch.attention_mask[0].sum().item() == lengths[0]  # the short one is left-padded, untouched
    assert tokenizer.truncation_side == "right"  # the tokenizer is left as it was


def test_generation_past_the_context_window_cuts_the_prompt_instead_of_running_off_the_positions(stories):
    from pipeline.evaluation.evaluate import sample_answers
    from pipeline.training.generation import generate

    model, tokenizer, _ = stories
    model.eval()
    long = "Once upon a time there was a little girl named Lily. " * 60 + "What happened next?"
    assert rendered_prompt_lengths(tokenizer, [long])[0] > context_length(model.config)
    answers = generate(model, tokenizer, [long, "Hi"], max_new_tokens=16)
    assert len(answers) == 2 and all(a.n_tokens <= 16 for a in answers)
    sampled = sample_answers(model, tokenizer, [long], 2, 1.0, 16, 8, seed=0)
    rollout = sampled.batches[0]
    assert rollout.query_ids.shape[1] + rollout.response_ids.shape[1] <= context_length(model.config)


LONG_PREFIX = "Earlier in this conversation: once upon a time there was a long, long story. " * 40


def _prompt_file(path: Path, records: list[dict]) -> str:
    from pipeline.data.records import write_jsonl

    write_jsonl(records, path)
    return str(path)


@pytest.mark.slow
def test_whole_graph_on_stories260k_with_the_tiny_profile_sizes(tiny_run_config, artifacts_root, dagster_instance, tmp_path):
    """base_model -> ... -> evaluation_report on a checkpoint nobody here trained; one PPO prompt and one
    evaluation prompt are longer than the 512-position window: cut from the left and counted, not a crash."""
    import json

    import dagster as dg

    from pipeline.data import generator
    from pipeline.definitions import defs
    from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource

    run_config = dict(tiny_run_config)
    ops = run_config["ops"] = dict(tiny_run_config["ops"])
    ops["base_model"] = {"config": {"model_name_or_path": str(STORIES260K)}}
    n_ppo, n_eval = ops["ppo_prompts"]["config"]["n_records"], ops["eval_prompts"]["config"]["n_records"]
    ppo_records = generator.prompt_records(n_ppo, 0, "ppo")
    ppo_records[0] = {**ppo_records[0], "prompt": LONG_PREFIX + ppo_records[0]["prompt"]}  # a training prompt
    eval_records = generator.prompt_records(n_eval, 0, "eval")
    eval_records[-1] = {**eval_records[-1], "prompt": LONG_PREFIX + eval_records[-1]["prompt"]}
    ops["ppo_prompts"] = {"config": {"source": _prompt_file(tmp_path / "ppo.jsonl", ppo_records)}}
    ops["eval_prompts"] = {"config": {"source": _prompt_file(tmp_path / "eval.jsonl", eval_records)}}

    result = dg.materialize(
        list(defs.assets), instance=dagster_instance, run_config=run_config,
        resources={"artifacts": ArtifactStoreResource(root=str(artifacts_root)), "io_manager": ArtifactIOManager()},
    )
    assert result.success

    def metadata(key: str) -> dict:
        event = dagster_instance.get_latest_materialization_event(dg.AssetKey(key))
        assert event is not None, f"{key} was not materialized"
        return event.asset_materialization.metadata

    base = metadata("base_model")
    assert base["model_name"].value == str(STORIES260K)
    assert base["vocab_size"].value == 515 and base["context_length"].value == 512
    assert "pad token" in base["added_to_checkpoint"].value and "chat template" in base["added_to_checkpoint"].value
    card = (Path(base["artifact_path"].value) / "README.md").read_text()
    assert "## Changes to the checkpoint" in card and "from 512 to 515 rows" in card

    ppo = metadata("ppo_policy")
    max_new_tokens = ops["ppo_policy"]["config"]["max_new_tokens"]
    assert ppo["max_prompt_tokens"].value == 512 - max_new_tokens
    assert ppo["n_prompts_truncated"].value == 1
    assert ppo["kl_to_sft"].value <= ppo["kl_bound"].value

    report = metadata("evaluation_report")
    assert report["n_prompts_truncated"].value == 1
    evaluation = json.loads((Path(report["artifact_path"].value) / "eval.json").read_text())
    assert evaluation["prompts_truncated"] == {"ppo": 1, "sft": 1, "base": 1}
    assert evaluation["n_prompts"] == n_eval and len(evaluation["win_rates"]["ppo_vs_sft"]["reward_model"]["ci95"]) == 2
