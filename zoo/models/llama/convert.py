"""Hugging Face Llama checkpoints <-> `zoo.models.llama.Llama`.

The only module that knows Hugging Face's Llama names (``input_layernorm``, ``o_proj``,
``intermediate_size``, ...). Conversion refuses any missing or unexpected weight and any configuration
zoo's Llama does not compute (biases, rope scaling, another activation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from zoo.models.hf_io import (
    LabelHead,
    SpanHead,
    config_value,
    decoder_architecture,
    decoder_head_mismatch,
    hf_architecture,
    load_decoder,
    register_converter,
    write_model_dir,
)
from zoo.models.llama.gguf import gguf_architecture, load_gguf
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
_PREFIX = "model."  # LlamaForCausalLM's and the classifiers' base model; LlamaModel has none
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


def config_to_hf(
    model: Llama,
    args: dict[str, Any],
    *,
    eot_token_id: int | None = None,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> dict[str, Any]:
    """A ``config.json`` dict for ``LlamaForCausalLM`` from ``Llama`` init arguments; ``eot_token_id``
    (the tokenizer's end-of-text token), when given, becomes the begin/end-of-text id, unless
    ``bos_token_id`` / ``eos_token_id`` (a chat model's: ``<|im_start|>``, ``<|im_end|>``) say otherwise."""
    attn = model.decoder.layers[0].self_attn
    config = {
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
    for key, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        value = eot_token_id if value is None else value
        if value is not None:
            config[key] = value
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    return config


INPUT_NAMES = ("input_ids", "attention_mask")
"""What Hugging Face's Llama is called with (and what its exported tokenizer returns)."""

PEFT_FAN_IN_FAN_OUT = False
"""transformers' Llama layers are ``nn.Linear``, like zoo's."""


def head_mismatch(head: LabelHead) -> str | None:
    """Why ``head`` has no faithful transformers Llama class, or ``None`` when it has one."""
    return decoder_head_mismatch(head, "Llama")


def _prefix(head: LabelHead | SpanHead | str) -> str:
    if isinstance(head, SpanHead):
        return "transformer."  # LlamaForQuestionAnswering's base model, by its older name
    return "" if head == "none" else _PREFIX


def hf_linear_names(name: str, *, head: LabelHead | SpanHead | str) -> tuple[str, ...]:
    """The transformers module computing Llama's linear layer ``name`` (e.g.
    ``decoder.layers.0.self_attn.q_proj``) in the model `save_hf` writes for ``head``.

    Raises:
        KeyError: ``name`` has no counterpart there.
    """
    if name == "lm_head" and head == "lm":
        return ("lm_head",)
    index, _, rest = name.removeprefix("decoder.layers.").partition(".")
    theirs = _LAYER_KEYS.get(f"{rest}.weight") if name.startswith("decoder.layers.") else None
    if theirs is None or not index.isdigit():
        raise KeyError(name)
    return (f"{_prefix(head)}layers.{index}.{theirs.removesuffix('.weight')}",)


def head_to_hf(head: LabelHead | SpanHead) -> dict[str, Tensor]:
    """A task's head by the names `save_hf` writes it under: ``qa_outputs`` (``LlamaForQuestionAnswering``)
    or ``score`` (``LlamaForTokenClassification``; ``LlamaForSequenceClassification``'s has no bias)."""
    if isinstance(head, SpanHead):
        return {"qa_outputs.weight": head.weight, "qa_outputs.bias": head.bias}
    if head.pooling is None:
        return {"score.weight": head.weight, "score.bias": head.bias}
    return {"score.weight": head.weight}


def check_exportable(args: dict[str, Any] | None) -> dict[str, Any]:
    """A Llama's init arguments (``model.spec["init_args"]``) when its architecture is one transformers and
    llama.cpp compute (rotary positions, none absolute); a `ValueError` saying why not."""
    if args is None:
        raise ValueError("this Llama was built with non-plain arguments; cannot write its config.json")
    for key in ("positions", "absolute_positions"):
        if args.get(key) is not None:
            part = args[key].get("class_path", args[key]) if isinstance(args[key], dict) else args[key]
            raise ValueError(
                f"transformers' Llama has rotary positions only; this Llama's {key} is {part}, so it cannot "
                "be exported"
            )
    return args


def save_hf(
    model: Llama,
    directory: str | os.PathLike,
    *,
    head: LabelHead | SpanHead | Literal["lm", "none"] = "lm",
    eot_token_id: int | None = None,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face directory (safetensors, atomic; see `write_model_dir`).

    Args:
        model: The Llama.
        directory: Target directory, replaced whole.
        head: ``"lm"``: ``LlamaForCausalLM``; ``"none"``: the bare ``LlamaModel``; a `LabelHead`:
            ``LlamaForTokenClassification`` (``pooling=None``) or ``LlamaForSequenceClassification``
            (``pooling="last"`` with a zero bias; see `head_mismatch`); a `SpanHead`:
            ``LlamaForQuestionAnswering``.
        eot_token_id: Id of the tokenizer's end-of-text token (config's begin/end-of-text id).
        pad_token_id: Padding id; ``LlamaForSequenceClassification`` finds each row's last token with it.
        bos_token_id: The config's begin-of-text id when not ``eot_token_id`` (a chat model's own).
        eos_token_id: The config's end id when not ``eot_token_id``: where ``generate`` stops (a chat
            model's end of turn, ``<|im_end|>``).
        files: Tokenizer files and the like, written in the same atomic step.

    Raises:
        ValueError: Positions other than rotary, or a head transformers cannot reproduce (the message says
            why).
    """
    args = check_exportable(model.spec["init_args"] if model.spec else None)
    config = config_to_hf(
        model,
        args,
        eot_token_id=eot_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    config["architectures"] = [decoder_architecture(head, config, family="Llama", lm="LlamaForCausalLM")]
    ours, prefix = model.state_dict(), _prefix(head)
    theirs = {prefix + t.removeprefix(_PREFIX): ours[m] for m, t in _TOP_KEYS.items()}
    for i in range(args["num_layers"]):
        for mine, t in _LAYER_KEYS.items():
            theirs[f"{prefix}layers.{i}.{t}"] = ours[f"decoder.layers.{i}.{mine}"]
    if isinstance(head, LabelHead | SpanHead):
        theirs.update(head_to_hf(head))
    elif head == "lm" and not args["tie_weights"]:
        theirs["lm_head.weight"] = ours["lm_head.weight"]
    return write_model_dir(directory, config, theirs, files=files)


register_converter(
    Llama,
    load=load_hf,
    save=save_hf,
    kind="decoder",
    input_names=INPUT_NAMES,
    heads=frozenset({"lm", "none"}),
    architecture=hf_architecture(config_from_hf),
    gguf_load=load_gguf,
    gguf_architecture=gguf_architecture,
    head_mismatch=head_mismatch,
    hf_linear_names=hf_linear_names,
    head_to_hf=head_to_hf,
    peft_fan_in_fan_out=PEFT_FAN_IN_FAN_OUT,
)
