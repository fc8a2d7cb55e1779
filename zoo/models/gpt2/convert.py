"""Hugging Face GPT-2 checkpoints <-> `zoo.models.gpt2.GPT2`.

The only module that knows OpenAI/Hugging Face names (``c_attn``, ``n_embd``, ...). HF's GPT-2 stores
linear weights as ``Conv1D`` with shape (in, out), the transpose of ``nn.Linear``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from zoo.models.gpt2.model import GPT2
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
    "tokens.weight": "wte.weight",
    "absolute_positions.weight": "wpe.weight",
    "decoder.norm.weight": "ln_f.weight",
    "decoder.norm.bias": "ln_f.bias",
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
            ours[f"decoder.layers.{i}.{mine}"] = w.t() if conv1d else w
    if "lm_head.weight" in hf:
        used.add("lm_head.weight")
        ours["lm_head.weight"] = hf["lm_head.weight"]
    elif not tie_weights:
        raise KeyError(f"{source}: untied checkpoint without 'lm_head.weight'")
    else:
        ours["lm_head.weight"] = ours["tokens.weight"]
    unexpected = sorted(set(hf) - used)
    if unexpected:
        raise KeyError(
            f"{source}: unexpected weights for GPT-2: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    return ours


def load_hf(cls: type[GPT2], name_or_path: str | os.PathLike) -> GPT2:
    return load_decoder(
        cls, name_or_path, config_from_hf=config_from_hf, state_dict_from_hf=state_dict_from_hf
    )


INPUT_NAMES = ("input_ids", "attention_mask")
"""What Hugging Face's GPT-2 should be called with: given ``token_type_ids`` it would add their token
embeddings (``wte``) to the input, which zoo's GPT-2 never does."""


def head_mismatch(head: LabelHead) -> str | None:
    """Why ``head`` has no faithful transformers GPT-2 class, or ``None`` when it has one."""
    return decoder_head_mismatch(head, "GPT2")


PEFT_FAN_IN_FAN_OUT = True
"""transformers' GPT-2 layers are ``Conv1D`` (weights stored (in, out)): PEFT's ``fan_in_fan_out``."""


def hf_linear_names(name: str, *, head: LabelHead | SpanHead | str) -> tuple[str, ...]:
    """The transformers module computing GPT2's linear layer ``name`` (e.g.
    ``decoder.layers.0.self_attn.qkv_proj``) in the model `save_hf` writes for ``head``.

    Raises:
        KeyError: ``name`` has no counterpart there.
    """
    index, _, rest = name.removeprefix("decoder.layers.").partition(".")
    theirs = _LAYER_KEYS.get(f"{rest}.weight") if name.startswith("decoder.layers.") else None
    if theirs is None or not index.isdigit():
        raise KeyError(name)
    prefix = "" if head == "none" else "transformer."
    return (f"{prefix}h.{index}.{theirs[0].removesuffix('.weight')}",)


def head_to_hf(head: LabelHead | SpanHead) -> dict[str, Tensor]:
    """A task's head by the names `save_hf` writes it under: ``classifier`` (``GPT2ForTokenClassification``),
    ``score`` (``GPT2ForSequenceClassification``, no bias) or ``qa_outputs``
    (``GPT2ForQuestionAnswering``)."""
    if isinstance(head, SpanHead):
        return {"qa_outputs.weight": head.weight, "qa_outputs.bias": head.bias}
    if head.pooling is None:
        return {"classifier.weight": head.weight, "classifier.bias": head.bias}
    return {"score.weight": head.weight}


def config_to_hf(
    args: dict[str, Any],
    *,
    eot_token_id: int | None = None,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> dict[str, Any]:
    """A ``config.json`` dict (for ``GPT2LMHeadModel``) for ``GPT2`` init arguments.

    ``eot_token_id`` (the tokenizer's ``<|endoftext|>``) becomes the begin/end-of-text id; without it,
    OpenAI's 50256 when the vocabulary has it. ``bos_token_id`` / ``eos_token_id`` override each.
    """
    if not args["bias"]:
        raise ValueError("Hugging Face GPT-2 has biases everywhere; a bias=False model cannot be exported")
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": args["vocab_size"],
        "n_positions": args["max_seq_len"],
        "n_ctx": args["max_seq_len"],
        "n_embd": args["embed_dim"],
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
    if eot_token_id is None and args["vocab_size"] > 50256:
        eot_token_id = 50256
    config.update(
        bos_token_id=eot_token_id if bos_token_id is None else bos_token_id,
        eos_token_id=eot_token_id if eos_token_id is None else eos_token_id,
    )
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    return config


def _backbone_to_hf(model: GPT2, num_layers: int) -> dict[str, Tensor]:
    """The transformer's weights by ``GPT2Model``'s names (no ``transformer.`` prefix)."""
    ours = model.state_dict()
    theirs = {t: ours[m] for m, t in _TOP_KEYS.items()}
    for i in range(num_layers):
        for mine, (t, conv1d) in _LAYER_KEYS.items():
            w = ours[f"decoder.layers.{i}.{mine}"]
            theirs[f"h.{i}.{t}"] = w.t() if conv1d else w
    return theirs


def save_hf(
    model: GPT2,
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
        model: The GPT-2.
        directory: Target directory, replaced whole.
        head: ``"lm"``: ``GPT2LMHeadModel``; ``"none"``: the bare ``GPT2Model``; a `LabelHead`:
            ``GPT2ForTokenClassification`` (``pooling=None``) or ``GPT2ForSequenceClassification``
            (``pooling="last"`` with a zero bias; see `head_mismatch`); a `SpanHead`:
            ``GPT2ForQuestionAnswering``.
        eot_token_id: Id of the tokenizer's ``<|endoftext|>`` (config's begin/end-of-text id).
        pad_token_id: Padding id; ``GPT2ForSequenceClassification`` finds each row's last token with it.
        bos_token_id: The config's begin-of-text id when not ``eot_token_id``.
        eos_token_id: The config's end id when not ``eot_token_id`` (where ``generate`` stops).
        files: Tokenizer files and the like, written in the same atomic step.

    Raises:
        ValueError: A ``bias=False`` model, or a head transformers cannot reproduce (the message says why).
    """
    args = model.spec["init_args"] if model.spec else None
    if args is None:
        raise ValueError("this GPT2 was built with non-plain arguments; cannot write its config.json")
    config = config_to_hf(
        args,
        eot_token_id=eot_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    backbone = _backbone_to_hf(model, args["num_layers"])
    if head == "none":
        config["architectures"] = ["GPT2Model"]
        return write_model_dir(directory, config, backbone, files=files)
    config["architectures"] = [decoder_architecture(head, config, family="GPT2", lm="GPT2LMHeadModel")]
    theirs = {f"transformer.{k}": v for k, v in backbone.items()}
    if isinstance(head, LabelHead | SpanHead):
        theirs.update(head_to_hf(head))
    elif not args["tie_weights"]:
        theirs["lm_head.weight"] = model.state_dict()["lm_head.weight"]
    return write_model_dir(directory, config, theirs, files=files)


register_converter(
    GPT2,
    load=load_hf,
    save=save_hf,
    kind="decoder",
    input_names=INPUT_NAMES,
    heads=frozenset({"lm", "none"}),
    architecture=hf_architecture(config_from_hf),
    head_mismatch=head_mismatch,
    hf_linear_names=hf_linear_names,
    head_to_hf=head_to_hf,
    peft_fan_in_fan_out=PEFT_FAN_IN_FAN_OUT,
)
