"""Hugging Face Llama checkpoints <-> `zoo.models.llama.Llama`.

The only module that knows Hugging Face's Llama names (``input_layernorm``, ``o_proj``,
``intermediate_size``, ...). Conversion refuses any missing or unexpected weight and any configuration
zoo's Llama does not compute (biases, rope scaling, another activation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor

from zoo.models.hf_io import config_value, load_decoder, register_converter, write_model_dir
from zoo.models.llama.model import Llama

# ours -> theirs, per layer (both use nn.Linear's (out, in) layout)
_LAYER_KEYS = {
    "self_attn_norm.weight": "input_layernorm.weight",
    "self_attn.q_proj.weight": "self_attn.q_proj.weight",
    "self_attn.k_proj.weight": "self_attn.k_proj.weight",
    "self_attn.v_proj.weight": "self_attn.v_proj.weight",
    "self_attn.out_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_TOP_KEYS = {"tokens.weight": "model.embed_tokens.weight", "decoder.norm.weight": "model.norm.weight"}
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # a buffer some old checkpoints saved


def _rope_theta(config: dict[str, Any], source: Path) -> float:
    rope = config.get("rope_parameters") or {}  # transformers >= 5; older ones: rope_theta, rope_scaling
    scaling = config.get("rope_scaling") or {}
    kind = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"{source / 'config.json'}: rope_type={kind!r}; zoo's Llama has plain rotary only")
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def config_from_hf(config: dict[str, Any], source: Path) -> dict[str, Any]:
    """``Llama`` constructor arguments from a Hugging Face ``config.json`` dict."""
    where = source / "config.json"
    if config.get("model_type") != "llama":
        raise ValueError(f"{where}: model_type={config.get('model_type')!r}, not a Llama checkpoint")
    for key, wanted in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if config.get(key, wanted) != wanted:
            raise ValueError(f"{where}: {key}={config[key]!r}; zoo's Llama has {key}={wanted!r}")
    embed_dim, num_heads = (
        config_value(config, "hidden_size", source),
        config_value(config, "num_attention_heads", source),
    )
    if config.get("head_dim", embed_dim // num_heads) != embed_dim // num_heads:
        raise ValueError(f"{where}: head_dim={config['head_dim']} is not hidden_size / num_attention_heads")
    return dict(
        vocab_size=config_value(config, "vocab_size", source),
        max_seq_len=config_value(config, "max_position_embeddings", source),
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=config.get("num_key_value_heads") or num_heads,
        num_layers=config_value(config, "num_hidden_layers", source),
        hidden_dim=config_value(config, "intermediate_size", source),
        rope_theta=_rope_theta(config, source),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_weights=bool(config.get("tie_word_embeddings", False)),
        dropout=float(config.get("attention_dropout", 0.0)),
    )


def state_dict_from_hf(hf: dict[str, Tensor], num_layers: int, tie_weights: bool, source: Path) -> dict:
    hf = {k: v for k, v in hf.items() if not k.endswith(_IGNORED_SUFFIXES)}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in hf:
            raise KeyError(f"{source}: weight {key!r} is missing; not a Llama checkpoint of this size?")
        used.add(key)
        return hf[key]

    ours = {mine: take(theirs) for mine, theirs in _TOP_KEYS.items()}
    for i in range(num_layers):
        for mine, theirs in _LAYER_KEYS.items():
            ours[f"decoder.layers.{i}.{mine}"] = take(f"model.layers.{i}.{theirs}")
    if "lm_head.weight" in hf:
        ours["lm_head.weight"] = take("lm_head.weight")
    elif tie_weights:
        ours["lm_head.weight"] = ours["tokens.weight"]
    else:
        raise KeyError(f"{source}: untied checkpoint (tie_word_embeddings=false) without 'lm_head.weight'")
    unexpected = sorted(set(hf) - used)
    if unexpected:
        more = " ..." if len(unexpected) > 8 else ""
        raise KeyError(f"{source}: unexpected weights for Llama: {unexpected[:8]}{more}")
    return ours


def load_hf(cls: type[Llama], name_or_path: str | os.PathLike) -> Llama:
    return load_decoder(
        cls, name_or_path, config_from_hf=config_from_hf, state_dict_from_hf=state_dict_from_hf
    )


def config_to_hf(model: Llama, args: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` dict for ``LlamaForCausalLM`` from ``Llama`` init arguments."""
    attn = model.decoder.layers[0].self_attn
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args["vocab_size"],
        "max_position_embeddings": args["max_seq_len"],
        "hidden_size": args["embed_dim"],
        "num_attention_heads": attn.num_heads,
        "num_key_value_heads": attn.num_kv_heads,
        "head_dim": attn.head_dim,
        "num_hidden_layers": args["num_layers"],
        "intermediate_size": model.decoder.layers[0].mlp.gate_proj.out_features,
        "hidden_act": "silu",
        "rms_norm_eps": args["norm_eps"],
        "rope_theta": args["rope_theta"],  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": args["rope_theta"]},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": args["dropout"],
        "tie_word_embeddings": args["tie_weights"],
        "initializer_range": 0.02,
    }


def save_hf(model: Llama, directory: str | os.PathLike) -> Path:
    """Write ``model`` as a Hugging Face ``LlamaForCausalLM`` directory (safetensors, atomic)."""
    args = model.spec["init_args"] if model.spec else None
    if args is None:
        raise ValueError("this Llama was built with non-plain arguments; cannot write its config.json")
    if args.get("positions") is not None:
        raise ValueError(
            "LlamaForCausalLM has rotary positions only; this Llama uses "
            f"{args['positions'].get('class_path', args['positions'])}, so it cannot be exported"
        )
    ours = model.state_dict()
    theirs = {t: ours[m] for m, t in _TOP_KEYS.items()}
    for i in range(args["num_layers"]):
        for mine, t in _LAYER_KEYS.items():
            theirs[f"model.layers.{i}.{t}"] = ours[f"decoder.layers.{i}.{mine}"]
    if not args["tie_weights"]:
        theirs["lm_head.weight"] = ours["lm_head.weight"]
    return write_model_dir(directory, config_to_hf(model, args), theirs)


register_converter(Llama, load=load_hf, save=save_hf)
