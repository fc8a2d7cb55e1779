"""Hugging Face GPT-2 checkpoints <-> `zoo.models.gpt2.GPT2`.

The only module that knows OpenAI/Hugging Face names (``c_attn``, ``n_embd``, ...). HF's GPT-2 stores
linear weights as ``Conv1D`` with shape (in, out), the transpose of ``nn.Linear``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from zoo.models.hf_io import config_value, read_config, read_state_dict, resolve_model_dir, write_model_dir

if TYPE_CHECKING:
    from zoo.models.gpt2.model import GPT2

# ours -> theirs, per layer; (name, is_conv1d)
_LAYER_KEYS = {
    "self_attn_norm.weight": ("ln_1.weight", False),
    "self_attn_norm.bias": ("ln_1.bias", False),
    "self_attn.qkv_proj.weight": ("attn.c_attn.weight", True),
    "self_attn.qkv_proj.bias": ("attn.c_attn.bias", False),
    "self_attn.out_proj.weight": ("attn.c_proj.weight", True),
    "self_attn.out_proj.bias": ("attn.c_proj.bias", False),
    "mlp_norm.weight": ("ln_2.weight", False),
    "mlp_norm.bias": ("ln_2.bias", False),
    "mlp.in_proj.weight": ("mlp.c_fc.weight", True),
    "mlp.in_proj.bias": ("mlp.c_fc.bias", False),
    "mlp.out_proj.weight": ("mlp.c_proj.weight", True),
    "mlp.out_proj.bias": ("mlp.c_proj.bias", False),
}
_TOP_KEYS = {
    "embeddings.tokens.weight": "wte.weight",
    "embeddings.positions.weight": "wpe.weight",
    "norm.weight": "ln_f.weight",
    "norm.bias": "ln_f.bias",
}
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old checkpoints


def config_from_hf(config: dict, source: Path) -> dict:
    """``GPT2`` constructor arguments from a Hugging Face ``config.json`` dict."""
    model_type = config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{source / 'config.json'}: model_type={model_type!r}, not a GPT-2 checkpoint")
    activation = config.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(
            f"{source / 'config.json'}: activation_function={activation!r} is not GPT-2's gelu_new"
        )
    return dict(
        vocab_size=config_value(config, "vocab_size", source),
        max_seq_len=config_value(config, "n_positions", source),
        embed_dim=config_value(config, "n_embd", source),
        num_heads=config_value(config, "n_head", source),
        num_layers=config_value(config, "n_layer", source),
        hidden_dim=config.get("n_inner"),
        dropout=float(config.get("resid_pdrop", 0.0)),
        layer_norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        tie_weights=bool(config.get("tie_word_embeddings", True)),
    )


def state_dict_from_hf(hf: dict[str, Tensor], num_layers: int, tie_weights: bool, source: Path) -> dict:
    prefix = "transformer." if any(k.startswith("transformer.") for k in hf) else ""
    hf = {k: v for k, v in hf.items() if not k.endswith(_IGNORED_SUFFIXES)}
    ours: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in hf:
            raise KeyError(f"{source}: weight {key!r} is missing; not a GPT-2 checkpoint of this size?")
        used.add(key)
        return hf[key]

    for mine, theirs in _TOP_KEYS.items():
        ours[mine] = take(prefix + theirs)
    for i in range(num_layers):
        for mine, (theirs, conv1d) in _LAYER_KEYS.items():
            w = take(f"{prefix}h.{i}.{theirs}")
            ours[f"layers.{i}.{mine}"] = w.t() if conv1d else w
    if "lm_head.weight" in hf:
        used.add("lm_head.weight")
        ours["lm_head.weight"] = hf["lm_head.weight"]
    elif not tie_weights:
        raise KeyError(f"{source}: untied checkpoint without 'lm_head.weight'")
    else:
        ours["lm_head.weight"] = ours["embeddings.tokens.weight"]
    unexpected = sorted(set(hf) - used)
    if unexpected:
        raise KeyError(
            f"{source}: unexpected weights for GPT-2: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    return ours


def load_hf(cls: type[GPT2], name_or_path: str | os.PathLike) -> GPT2:
    model_dir = resolve_model_dir(name_or_path)
    kwargs = config_from_hf(read_config(model_dir), model_dir)
    model = cls(**kwargs)
    state = state_dict_from_hf(
        read_state_dict(model_dir), kwargs["num_layers"], kwargs["tie_weights"], model_dir
    )
    model.load_state_dict(state, strict=True)
    return model


def save_hf(model: GPT2, directory: str | os.PathLike) -> Path:
    args = model.spec["init_args"] if model.spec else None
    if args is None:
        raise ValueError("this GPT2 was built with non-plain arguments; cannot write its config.json")
    embed_dim = args["embed_dim"]
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": args["vocab_size"],
        "n_positions": args["max_seq_len"],
        "n_ctx": args["max_seq_len"],
        "n_embd": embed_dim,
        "n_head": args["num_heads"],
        "n_layer": args["num_layers"],
        "n_inner": args["hidden_dim"],
        "activation_function": "gelu_new",
        "resid_pdrop": args["dropout"],
        "embd_pdrop": args["dropout"],
        "attn_pdrop": args["dropout"],
        "layer_norm_epsilon": args["layer_norm_eps"],
        "tie_word_embeddings": args["tie_weights"],
        "initializer_range": 0.02,
    }
    # transformers defaults both to GPT-2's <|endoftext|> (50256), which is no id of a smaller vocabulary
    eot = 50256 if args["vocab_size"] > 50256 else None
    config.update(bos_token_id=eot, eos_token_id=eot)
    if not args["bias"]:
        raise ValueError("Hugging Face GPT-2 has biases everywhere; a bias=False model cannot be exported")
    ours = model.state_dict()
    theirs = {f"transformer.{t}": ours[m] for m, t in _TOP_KEYS.items()}
    for i in range(args["num_layers"]):
        for mine, (t, conv1d) in _LAYER_KEYS.items():
            w = ours[f"layers.{i}.{mine}"]
            theirs[f"transformer.h.{i}.{t}"] = w.t() if conv1d else w
    if not args["tie_weights"]:
        theirs["lm_head.weight"] = ours["lm_head.weight"]
    return write_model_dir(directory, config, theirs)
