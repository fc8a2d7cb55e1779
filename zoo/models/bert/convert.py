"""Hugging Face BERT checkpoints <-> `zoo.models.bert.Bert`.

The only module that knows Hugging Face's BERT names (``hidden_size``, ``attention.self.query``, ``cls.*``).
Checkpoints come with or without the ``bert.`` prefix (``BertForPreTraining`` vs ``BertModel``), with or
without the pooler and the ``cls.*`` pretraining heads, and with the LayerNorm parameters of TF-converted
checkpoints named ``gamma``/``beta``. Separate query/key/value weights become our fused ``qkv_proj``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from zoo.models.bert.encoder_decoder import BertEncoderDecoder
from zoo.models.bert.encoder_decoder import load_hf as load_encoder_decoder_hf
from zoo.models.bert.model import Bert
from zoo.models.hf_io import (
    LabelHead,
    SpanHead,
    config_value,
    hf_architecture,
    label_config,
    read_config,
    read_state_dict,
    register_converter,
    resolve_model_dir,
    write_model_dir,
)

# ours -> theirs; encoder names are relative to the ``bert.`` prefix, head names are not
_EMBEDDING_KEYS = {
    "embeddings.tokens.weight": "embeddings.word_embeddings.weight",
    "embeddings.positions.weight": "embeddings.position_embeddings.weight",
    "embeddings.segments.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
}
_OUR_LAYER = "encoder.layers."  # + "{i}.": where Bert keeps block i (Hugging Face: ``encoder.layer.{i}.``)
_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")  # concatenated in this order
_LAYER_KEYS = {
    "self_attn.out_proj.weight": "attention.output.dense.weight",
    "self_attn.out_proj.bias": "attention.output.dense.bias",
    "self_attn_norm.weight": "attention.output.LayerNorm.weight",
    "self_attn_norm.bias": "attention.output.LayerNorm.bias",
    "mlp.in_proj.weight": "intermediate.dense.weight",
    "mlp.in_proj.bias": "intermediate.dense.bias",
    "mlp.out_proj.weight": "output.dense.weight",
    "mlp.out_proj.bias": "output.dense.bias",
    "mlp_norm.weight": "output.LayerNorm.weight",
    "mlp_norm.bias": "output.LayerNorm.bias",
}
_POOLER_KEYS = {"pooler.proj.weight": "pooler.dense.weight", "pooler.proj.bias": "pooler.dense.bias"}
_MLM_KEYS = {
    "mlm_head.proj.weight": "cls.predictions.transform.dense.weight",
    "mlm_head.proj.bias": "cls.predictions.transform.dense.bias",
    "mlm_head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm_head.decoder.bias": "cls.predictions.bias",
}
_NSP_KEYS = {"nsp_head.weight": "cls.seq_relationship.weight", "nsp_head.bias": "cls.seq_relationship.bias"}
# BERT2BERT's decoder layers (BertGenerationDecoder's ``bert.encoder.layer.{i}.``): BERT's keys plus these
_CROSS_KV = ("crossattention.self.key", "crossattention.self.value")  # zoo's fused kv_proj, in this order
_CROSS_KEYS = {
    "cross_attn.q_proj.weight": "crossattention.self.query.weight",
    "cross_attn.q_proj.bias": "crossattention.self.query.bias",
    "cross_attn.out_proj.weight": "crossattention.output.dense.weight",
    "cross_attn.out_proj.bias": "crossattention.output.dense.bias",
    "cross_attn_norm.weight": "crossattention.output.LayerNorm.weight",
    "cross_attn_norm.bias": "crossattention.output.LayerNorm.bias",
}
# Buffers of some transformers versions, and the decoder weight/bias that alias the word embedding and
# ``cls.predictions.bias`` (older checkpoints store the aliases too).
_IGNORED = {
    "embeddings.position_ids",
    "embeddings.token_type_ids",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
}


def config_from_hf(config: dict[str, Any], source: Path) -> dict[str, Any]:
    """``Bert`` constructor arguments (without the heads flag) from a Hugging Face ``config.json`` dict."""
    where = source / "config.json"
    if config.get("model_type", "bert") != "bert":
        raise ValueError(f"{where}: model_type={config['model_type']!r}, not a BERT checkpoint")
    checks = {
        "hidden_act": ("gelu", "BERT's exact GELU"),
        "position_embedding_type": ("absolute", "learned absolute positions"),
        "tie_word_embeddings": (True, "an MLM decoder tied to the word embeddings"),
        "is_decoder": (False, "a bidirectional encoder"),
    }
    for key, (expected, meaning) in checks.items():
        if config.get(key, expected) != expected:
            raise ValueError(
                f"{where}: {key}={config[key]!r}, but Bert supports only {meaning} ({expected!r})"
            )
    return dict(
        vocab_size=config_value(config, "vocab_size", source),
        max_seq_len=config_value(config, "max_position_embeddings", source),
        embed_dim=config_value(config, "hidden_size", source),
        num_heads=config_value(config, "num_attention_heads", source),
        num_layers=config_value(config, "num_hidden_layers", source),
        hidden_dim=config_value(config, "intermediate_size", source),
        dropout=float(config.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(config.get("attention_probs_dropout_prob", 0.1)),
        type_vocab_size=config_value(config, "type_vocab_size", source),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        pad_token_id=config.get("pad_token_id", 0),
    )


def _canonical_names(hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``bert.`` prefix, rename ``LayerNorm.gamma/beta``, prefer ``cls.predictions.bias``."""
    has_prefix = any(k.startswith("bert.") for k in hf)
    out: dict[str, Tensor] = {}
    for key, value in hf.items():
        if has_prefix and key.startswith("bert."):
            key = key[len("bert.") :]
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        out[key] = value
    if "cls.predictions.bias" not in out and "cls.predictions.decoder.bias" in out:
        out["cls.predictions.bias"] = out.pop("cls.predictions.decoder.bias")
    return out


def state_dict_from_hf(
    hf: dict[str, Tensor], *, num_layers: int, with_pretraining_heads: bool, source: Path
) -> tuple[dict[str, Tensor], list[str]]:
    """Our state dict from a Hugging Face one, and the Hugging Face names of the optional parts (pooler,
    heads) the checkpoint lacks. Tensors not consumed raise ``KeyError``, as do missing encoder weights."""
    hf = _canonical_names(hf)
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in hf:
            raise KeyError(f"{source}: weight {key!r} is missing; not a BERT checkpoint of this size?")
        used.add(key)
        return hf[key]

    ours = {mine: take(theirs) for mine, theirs in _EMBEDDING_KEYS.items()}
    for i in range(num_layers):
        block, prefix = f"{_OUR_LAYER}{i}.", f"encoder.layer.{i}."
        for suffix in ("weight", "bias"):
            parts = [take(f"{prefix}{name}.{suffix}") for name in _QKV]
            ours[f"{block}self_attn.qkv_proj.{suffix}"] = torch.cat(parts, dim=0)  # (3C, C) / (3C,)
        ours.update({block + mine: take(prefix + theirs) for mine, theirs in _LAYER_KEYS.items()})
    head_groups = [_MLM_KEYS, _NSP_KEYS]
    missing: list[str] = []
    for group in [_POOLER_KEYS, *head_groups] if with_pretraining_heads else [_POOLER_KEYS]:
        if not any(theirs in hf for theirs in group.values()):
            missing += group.values()
            continue
        ours.update({mine: take(theirs) for mine, theirs in group.items()})  # a partial group is an error
    if with_pretraining_heads:
        ours["mlm_head.decoder.weight"] = ours["embeddings.tokens.weight"]
    ignored = set(_IGNORED)
    if not with_pretraining_heads:
        ignored |= {theirs for group in head_groups for theirs in group.values()}
    unexpected = sorted(set(hf) - used - ignored)
    if unexpected:
        more = " ..." if len(unexpected) > 8 else ""
        raise KeyError(f"{source}: unexpected weights for BERT: {unexpected[:8]}{more}")
    return ours, missing


def load_hf(cls: type[Bert], name_or_path: str | os.PathLike, *, with_pretraining_heads: bool = True) -> Bert:
    """``Bert.from_hf``: load a Hugging Face BERT directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``) saved from ``BertModel``, ``BertForPreTraining`` or ``BertForMaskedLM``, a
    ``python:<package>`` bundle, or a Hub name when ``huggingface_hub`` is installed and online.

    Parts the checkpoint lacks (the pooler, the MLM or NSP head) keep their fresh initialisation and are
    named in a ``UserWarning``. With ``with_pretraining_heads=False`` the checkpoint's heads are dropped.

    Args:
        cls: ``Bert`` or a subclass, built from the directory's ``config.json``.
        name_or_path: The directory, ``python:<package>`` or Hub name (see `resolve_model_dir`).
        with_pretraining_heads: Build (and load) the MLM and NSP heads.

    Raises:
        KeyError: A weight of the encoder is missing, or a tensor is not BERT's (named in the message).
        ValueError: A ``config.json`` setting Bert does not compute (the key and the reason are named).
    """
    model_dir = resolve_model_dir(name_or_path)
    kwargs = config_from_hf(read_config(model_dir), model_dir)
    model = cls(**kwargs, with_pretraining_heads=with_pretraining_heads)
    state, missing = state_dict_from_hf(
        read_state_dict(model_dir),
        num_layers=kwargs["num_layers"],
        with_pretraining_heads=with_pretraining_heads,
        source=model_dir,
    )
    result = model.load_state_dict(state, strict=False)
    theirs_to_ours = {t: m for group in (_POOLER_KEYS, _MLM_KEYS, _NSP_KEYS) for m, t in group.items()}
    if result.unexpected_keys or set(result.missing_keys) != {theirs_to_ours[t] for t in missing}:
        raise RuntimeError(f"{model_dir}: conversion bug: {result}")  # the key tables above are out of date
    if missing:
        warnings.warn(
            f"{model_dir} has no {', '.join(missing)}; these parts of Bert keep their fresh initialisation",
            UserWarning,
            stacklevel=3,
        )
    return model


def config_to_hf(args: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` dict for ``Bert`` init arguments."""
    heads = args["with_pretraining_heads"]
    return {
        "architectures": ["BertForPreTraining" if heads else "BertModel"],
        "model_type": "bert",
        "vocab_size": args["vocab_size"],
        "max_position_embeddings": args["max_seq_len"],
        "hidden_size": args["embed_dim"],
        "num_attention_heads": args["num_heads"],
        "num_hidden_layers": args["num_layers"],
        "intermediate_size": args["hidden_dim"] or 4 * args["embed_dim"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": args["dropout"],
        "attention_probs_dropout_prob": args["attention_dropout"],
        "type_vocab_size": args["type_vocab_size"],
        "layer_norm_eps": args["layer_norm_eps"],
        "pad_token_id": args["pad_token_id"],
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
    }


INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
"""What Hugging Face's BERT is called with (and what its exported tokenizer returns)."""

_ARCHITECTURES = {"pretraining": "BertForPreTraining", "mlm": "BertForMaskedLM", "none": "BertModel"}


def head_mismatch(head: LabelHead) -> str | None:
    """Why ``head`` has no faithful transformers BERT class, or ``None`` when it has one."""
    if head.pooling in (None, "pooler"):
        return None  # BertForTokenClassification / BertForSequenceClassification
    return (
        "BertForSequenceClassification always classifies BERT's pooler output (tanh(Linear(h[CLS]))); "
        f"pooling={head.pooling!r} has no transformers equivalent"
    )


PEFT_FAN_IN_FAN_OUT = False
"""transformers' BERT layers are ``nn.Linear``, like zoo's."""


def hf_linear_names(name: str, *, head: LabelHead | SpanHead | str) -> tuple[str, ...]:
    """The transformers modules computing Bert's linear layer ``name`` (e.g.
    ``encoder.layers.0.self_attn.qkv_proj``) in the model `save_hf` writes for ``head``: the fused
    query/key/value projection is three (its output rows, in this order).

    Raises:
        KeyError: ``name`` has no counterpart there (e.g. the pooler of a model exported without one).
    """
    prefix = "" if head == "none" else "bert."
    index, _, rest = name.removeprefix(_OUR_LAYER).partition(".")
    if name.startswith(_OUR_LAYER) and index.isdigit():
        if rest == "self_attn.qkv_proj":
            return tuple(f"{prefix}encoder.layer.{index}.{q}" for q in _QKV)
        theirs = _LAYER_KEYS.get(f"{rest}.weight")
        if theirs is not None:
            return (f"{prefix}encoder.layer.{index}.{theirs.removesuffix('.weight')}",)
    if name + ".weight" in _POOLER_KEYS and _has_pooler(head):
        return (prefix + _POOLER_KEYS[name + ".weight"].removesuffix(".weight"),)
    heads = {"pretraining": {**_MLM_KEYS, **_NSP_KEYS}, "mlm": _MLM_KEYS}
    heads = heads.get(head, {}) if isinstance(head, str) else {}
    if name + ".weight" in heads:
        return (heads[name + ".weight"].removesuffix(".weight"),)
    raise KeyError(name)


def _has_pooler(head: LabelHead | SpanHead | str) -> bool:
    """Whether the model `save_hf` writes for ``head`` has BERT's pooler (only a sequence classifier reads
    it; ``BertForMaskedLM`` and the per-token heads have none)."""
    if isinstance(head, SpanHead):
        return False
    if isinstance(head, LabelHead):
        return head.pooling is not None
    return head in ("pretraining", "none")


def head_to_hf(head: LabelHead | SpanHead) -> dict[str, Tensor]:
    """A task's head by the names `save_hf` writes it under: ``classifier`` (``BertFor{Sequence,Token}
    Classification``) or ``qa_outputs`` (``BertForQuestionAnswering``)."""
    name = "qa_outputs" if isinstance(head, SpanHead) else "classifier"
    return {f"{name}.weight": head.weight, f"{name}.bias": head.bias}


def _encoder_to_hf(model: Bert, num_layers: int, *, pooler: bool) -> dict[str, Tensor]:
    """The encoder's weights by ``BertModel``'s names (no ``bert.`` prefix), with or without the pooler."""
    ours = model.state_dict()
    keys = {**_EMBEDDING_KEYS, **_POOLER_KEYS} if pooler else _EMBEDDING_KEYS
    theirs = {t: ours[m] for m, t in keys.items()}
    for i in range(num_layers):
        layer = f"encoder.layer.{i}."
        for suffix in ("weight", "bias"):
            qkv = ours[f"{_OUR_LAYER}{i}.self_attn.qkv_proj.{suffix}"].chunk(3, dim=0)  # 3 x (C, C) / (C,)
            # clone: safetensors refuses tensors that share storage
            theirs.update({f"{layer}{name}.{suffix}": t.clone() for name, t in zip(_QKV, qkv)})
        theirs.update({layer + t: ours[f"{_OUR_LAYER}{i}.{m}"] for m, t in _LAYER_KEYS.items()})
    return theirs


def save_hf(
    model: Bert,
    directory: str | os.PathLike,
    *,
    head: LabelHead | SpanHead | Literal["pretraining", "mlm", "none"] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """``Bert.to_hf``: write ``model`` as a Hugging Face directory (safetensors, atomic; see
    `write_model_dir`) that ``BertForPreTraining`` loads (``BertModel`` when it has no pretraining heads).

    Args:
        model: The BERT.
        directory: Target directory, replaced whole.
        head: ``"pretraining"``: ``BertForPreTraining`` (MLM + NSP heads); ``"mlm"``: ``BertForMaskedLM``
            (no pooler, no NSP head); ``"none"``: the bare ``BertModel`` (with the pooler); a `LabelHead`:
            ``BertForTokenClassification`` (``pooling=None``) or ``BertForSequenceClassification``
            (``pooling="pooler"``; see `head_mismatch`); a `SpanHead`: ``BertForQuestionAnswering``.
            ``None``: ``"pretraining"`` when the model has the pretraining heads, else ``"none"``.
        files: Tokenizer files and the like, written in the same atomic step.

    Raises:
        ValueError: A head the model lacks or transformers cannot reproduce (the message says why).
    """
    args = model.spec["init_args"] if model.spec else None
    if args is None:
        raise ValueError("this Bert was built with non-plain arguments; cannot write its config.json")
    has_heads = args["with_pretraining_heads"]
    head = head or ("pretraining" if has_heads else "none")
    config = config_to_hf(args)
    num_layers = args["num_layers"]
    if isinstance(head, LabelHead | SpanHead):
        config["architectures"] = [_task_architecture(head)]
        if isinstance(head, LabelHead):
            config.update(label_config(head))
        encoder = _encoder_to_hf(model, num_layers, pooler=_has_pooler(head))
        theirs = {f"bert.{k}": v for k, v in encoder.items()} | head_to_hf(head)
        return write_model_dir(directory, config, theirs, files=files)
    if head not in _ARCHITECTURES:
        raise ValueError(
            f"head must be 'pretraining', 'mlm', 'none', a LabelHead or a SpanHead, got {head!r}"
        )
    if head != "none" and not has_heads:
        raise ValueError(f"head={head!r}: this Bert has no MLM head (with_pretraining_heads=False)")
    config["architectures"] = [_ARCHITECTURES[head]]
    encoder = _encoder_to_hf(model, num_layers, pooler=head != "mlm")
    if head == "none":  # BertModel does not nest the encoder under ``bert.``
        return write_model_dir(directory, config, encoder, files=files)
    theirs = {f"bert.{k}": v for k, v in encoder.items()}
    ours = model.state_dict()
    heads = {**_MLM_KEYS, **_NSP_KEYS} if head == "pretraining" else _MLM_KEYS
    theirs.update({t: ours[m] for m, t in heads.items()})
    return write_model_dir(directory, config, theirs, files=files)


def _task_architecture(head: LabelHead | SpanHead) -> str:
    if isinstance(head, SpanHead):
        return "BertForQuestionAnswering"
    problem = head_mismatch(head)
    if problem is not None:
        raise ValueError(f"cannot export this head: {problem}")
    return "BertForTokenClassification" if head.pooling is None else "BertForSequenceClassification"


# -- BERT2BERT: transformers' EncoderDecoderModel ----------------------------------------------------------
def encoder_decoder_config_to_hf(
    args: dict[str, Any], *, pad_token_id: int, decoder_start_token_id: int, eos_token_id: int
) -> dict[str, Any]:
    """An ``EncoderDecoderModel`` ``config.json`` dict for `BertEncoderDecoder` init arguments: a
    ``BertModel`` encoder and a ``BertGenerationDecoder`` (``model_type: bert-generation``) decoder.

    Not ``BertLMHeadModel``: its output layer reads BERT's MLM transform (dense, GELU, LayerNorm) first,
    which zoo's decoder does not have; ``BertGenerationDecoder`` projects the hidden states directly onto
    the (tied) word table, as zoo does.
    """
    encoder = config_to_hf({**args, "with_pretraining_heads": False})
    decoder = {k: v for k, v in encoder.items() if k not in ("type_vocab_size", "position_embedding_type")}
    decoder.update(
        architectures=["BertGenerationDecoder"],
        model_type="bert-generation",
        is_decoder=True,
        add_cross_attention=True,
        bos_token_id=decoder_start_token_id,
        eos_token_id=eos_token_id,
    )
    return {
        "architectures": ["EncoderDecoderModel"],
        "model_type": "encoder-decoder",
        "is_encoder_decoder": True,
        "encoder": encoder,
        "decoder": decoder,
        "pad_token_id": pad_token_id,
        "decoder_start_token_id": decoder_start_token_id,
        "bos_token_id": decoder_start_token_id,
        "eos_token_id": eos_token_id,
    }


def _decoder_to_hf(model: BertEncoderDecoder, num_layers: int) -> dict[str, Tensor]:
    """BERT2BERT's decoder by ``BertGenerationDecoder``'s names (its output layer tied to the word table)."""
    ours = model.state_dict()
    embeddings = "decoder_embeddings."
    positions = ours[f"{embeddings}positions.weight"]
    segments = ours.get(f"{embeddings}segments.weight")
    if segments is not None:  # BertGeneration has no segments; zoo adds segment 0 at every position
        positions = positions + segments[0]
    theirs = {
        "bert.embeddings.word_embeddings.weight": ours[f"{embeddings}tokens.weight"].clone(),  # shared in zoo
        "bert.embeddings.position_embeddings.weight": positions,
        "bert.embeddings.LayerNorm.weight": ours[f"{embeddings}norm.weight"],
        "bert.embeddings.LayerNorm.bias": ours[f"{embeddings}norm.bias"],
        "lm_head.bias": torch.zeros(model.vocab_size),  # zoo's output layer has no bias
    }
    for i in range(num_layers):
        mine, layer = f"decoder.layers.{i}.", f"bert.encoder.layer.{i}."
        for suffix in ("weight", "bias"):
            qkv = ours[f"{mine}self_attn.qkv_proj.{suffix}"].chunk(3, dim=0)  # 3 x (C, C) / (C,)
            kv = ours[f"{mine}cross_attn.kv_proj.{suffix}"].chunk(2, dim=0)  # 2 x (C, C) / (C,)
            split = zip(_QKV + _CROSS_KV, qkv + kv)
            theirs.update({f"{layer}{name}.{suffix}": t.clone() for name, t in split})
        theirs.update({layer + t: ours[mine + m] for m, t in {**_LAYER_KEYS, **_CROSS_KEYS}.items()})
    return theirs


def save_encoder_decoder_hf(
    model: BertEncoderDecoder,
    directory: str | os.PathLike,
    *,
    pad_token_id: int = 0,
    decoder_start_token_id: int = 101,
    eos_token_id: int = 102,
    files: Mapping[str, str] | None = None,
) -> Path:
    """``BertEncoderDecoder.to_hf``: write BERT2BERT as a Hugging Face directory that transformers'
    ``EncoderDecoderModel`` loads (a ``BertModel`` encoder with its pooler, a ``BertGenerationDecoder``;
    see `encoder_decoder_config_to_hf`), with the same logits. Safetensors, atomic (`write_model_dir`).

    Args:
        model: The BERT2BERT.
        directory: Target directory, replaced whole.
        pad_token_id: Padding id (``config.pad_token_id``: transformers pads shifted labels with it).
        decoder_start_token_id: The token decoding starts from (BERT2BERT: ``[CLS]``).
        eos_token_id: The token that ends a generated sequence (BERT2BERT: ``[SEP]``).
        files: Tokenizer files and the like, written in the same atomic step.
    """
    args = model.spec["init_args"] if model.spec else None
    if args is None:
        raise ValueError("this BertEncoderDecoder has non-plain arguments; cannot write its config.json")
    ids = dict(pad_token_id=pad_token_id, decoder_start_token_id=decoder_start_token_id)
    config = encoder_decoder_config_to_hf(args, **ids, eos_token_id=eos_token_id)
    num_layers = args["num_layers"]
    theirs = {f"encoder.{k}": v for k, v in _encoder_to_hf(model.encoder, num_layers, pooler=True).items()}
    theirs.update({f"decoder.{k}": v for k, v in _decoder_to_hf(model, num_layers).items()})
    return write_model_dir(directory, config, theirs, files=files)


register_converter(
    Bert,
    load=load_hf,
    save=save_hf,
    kind="encoder",
    input_names=INPUT_NAMES,
    heads=frozenset({"pretraining", "mlm", "none"}),
    load_args=("with_pretraining_heads",),
    architecture=hf_architecture(config_from_hf),
    head_mismatch=head_mismatch,
    hf_linear_names=hf_linear_names,
    head_to_hf=head_to_hf,
    peft_fan_in_fan_out=PEFT_FAN_IN_FAN_OUT,
)
register_converter(
    BertEncoderDecoder,
    load=load_encoder_decoder_hf,
    save=save_encoder_decoder_hf,
    kind="encoder-decoder",
    input_names=INPUT_NAMES,
    load_args=("cross_attention_init",),
)
