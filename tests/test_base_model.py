import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.settings import PretrainSettings, TinyModelSpec
from pipeline.training.chat_format import render_prompt
from pipeline.training.base_model import build_default_base_model, build_tiny_llama, train_tokenizer
from pipeline.data.generator import pretraining_text
from pipeline.training.generation import generate

SPEC = TinyModelSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def test_tokenizer_has_distinct_special_tokens_and_a_chat_template():
    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=512)
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    assert len(ids) == 3 and None not in ids
    assert tokenizer.padding_side == "left"
    prompt = render_prompt(tokenizer, "What is 2 + 3?")
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}], tokenize=False
    )
    assert full.startswith(prompt), "the rendered prompt must be a prefix of prompt + answer"
    assert full.rstrip("\n").endswith(tokenizer.eos_token)
    # special tokens stay atomic
    assert tokenizer.encode("<|assistant|>", add_special_tokens=False) == [tokenizer.convert_tokens_to_ids("<|assistant|>")]


def test_tiny_model_pretrains_and_reloads_with_from_pretrained(tmp_path):
    settings = PretrainSettings(pretrain_steps=30, pretrain_batch_size=4, pretrain_sequence_length=32, pretrain_documents=100)
    model, tokenizer, losses = build_default_base_model(SPEC, settings, torch.device("cpu"))
    assert losses[-1] < losses[0], "pretraining should lower the loss"
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    assert (tmp_path / "model.safetensors").exists()
    ids = torch.tensor([[tokenizer.bos_token_id, 10, 11, 12]])
    assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-5)


def test_generation_left_pads_and_reports_eos():
    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=512)
    model = build_tiny_llama(tokenizer, SPEC, seed=0)
    out = generate(model, tokenizer, ["short", "a much longer prompt than the other one"], max_new_tokens=5)
    assert len(out) == 2
    assert all(g.n_tokens <= 5 for g in out)
    # greedy decoding of the same prompt is the same whether batched with a longer prompt or alone
    alone = generate(model, tokenizer, ["short"], max_new_tokens=5)
    assert alone[0].response == out[0].response
