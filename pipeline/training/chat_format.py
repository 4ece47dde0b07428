"""Chat formatting: the special tokens, role markers and chat template of the default model, and the prompt text.

Every stage renders a prompt the same way, with the tokenizer's own chat template
(`render_prompt`); a tokenizer without one gets `CHAT_TEMPLATE` (`pipeline.training.base_model`).
"""

from __future__ import annotations

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
ROLE_MARKERS = (USER, ASSISTANT)

# The prompt a model sees is the user turn followed by the assistant header; the assistant's
# answer ends with the eos token. Rendering the prompt alone gives a prefix of prompt+answer.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}<|user|>\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def render_prompt(tokenizer, prompt: str) -> str:
    """The text a chat model sees before it answers `prompt`."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
