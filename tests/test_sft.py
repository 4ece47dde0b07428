import json

import torch

from pipeline.data.generator import pretraining_text, sft_records
from pipeline.data.records import split_held_out
from pipeline.settings import SftSettings, TinyModelSpec
from pipeline.training.base_model import build_tiny_llama, train_tokenizer
from pipeline.training.chat_format import ASSISTANT, render_prompt
from pipeline.training.sft import sft_config, to_prompt_completion


def test_loss_is_on_answer_tokens_only(tmp_path):
    from trl import SFTTrainer

    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=512)
    model = build_tiny_llama(tokenizer, TinyModelSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 0)
    records = sft_records(8, 0)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(SftSettings(batch_size=8, device="cpu"), str(tmp_path), has_eval=False),
        train_dataset=to_prompt_completion(tokenizer, records),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assistant_id = tokenizer.convert_tokens_to_ids(ASSISTANT)
    seen_answers = set()
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()):
        real = [i for i, m in enumerate(mask) if m]
        ids_real = [ids[i] for i in real]
        labels_real = [labels[i] for i in real]
        prompt_len = len(tokenizer(render_prompt(tokenizer, "x"), add_special_tokens=False)["input_ids"])  # sanity
        assert prompt_len > 0
        header_end = ids_real.index(assistant_id) + 2  # "<|assistant|>" then "\n"
        assert all(label == -100 for label in labels_real[:header_end]), "prompt tokens must not be trained on"
        assert labels_real[header_end:] == ids_real[header_end:], "every answer token is trained on"
        assert ids_real[-1] == tokenizer.eos_token_id, "the answer ends with EOS, and EOS is trained on"
        assert all(labels[i] == -100 for i, m in enumerate(mask) if not m), "padding is never trained on"
        seen_answers.add(tokenizer.decode(ids_real[header_end:-1]))
    assert seen_answers == {r["completion"] for r in records}


def test_held_out_split_is_deterministic_and_disjoint():
    records = [{"prompt": str(i), "completion": "x"} for i in range(50)]
    train, held_out = split_held_out(records, 0.2, seed=3)
    assert len(held_out) == 10 and len(train) == 40
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert split_held_out(records, 0.2, seed=3) == (train, held_out)


def test_training_records_the_held_out_loss_curve_and_plots_it(tmp_path):
    from pipeline.training.sft import plot_loss_curves, train_sft

    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=512)
    model = build_tiny_llama(tokenizer, TinyModelSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 0)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    settings = SftSettings(batch_size=8, epochs=2, held_out_eval_every=0.25, n_format_samples=2, max_new_tokens=4, device="cpu")
    metrics = train_sft(tmp_path / "base", sft_records(48, 0), tmp_path / "sft", settings)
    curve = metrics["held_out_loss_curve"]
    assert len(curve) >= 4 and [p["step"] for p in curve] == sorted(p["step"] for p in curve)
    assert curve[-1]["held_out_loss"] == metrics["held_out_loss"] < metrics["held_out_loss_before"]
    assert plot_loss_curves(metrics, tmp_path / "curves.png") and (tmp_path / "curves.png").stat().st_size > 0


def test_the_loss_on_full_logits_equals_trls_fused_lm_head_loss(tmp_path):
    """On a CPU SFT computes the loss from the model's logits instead of TRL's fused, chunked LM head
    (`fused_lm_head: auto`): a faster route to the same loss, and the same training."""
    from pipeline.training.sft import train_sft

    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=512)
    model = build_tiny_llama(tokenizer, TinyModelSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 0)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    metrics = {}
    for fused in ("on", "auto"):
        settings = SftSettings(batch_size=8, epochs=1, held_out_eval_every=0.5, n_format_samples=1, max_new_tokens=2,
                               device="cpu", fused_lm_head=fused)
        metrics[fused] = train_sft(tmp_path / "base", sft_records(40, 0), tmp_path / f"sft-{fused}", settings)
    for key in ("held_out_loss_before", "held_out_loss", "train_loss"):
        assert abs(metrics["on"][key] - metrics["auto"][key]) < 1e-4 * abs(metrics["on"][key]), key
