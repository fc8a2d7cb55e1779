"""`zoo.models.llama.Llama` -> one GGUF file that llama.cpp (and transformers' GGUF loader) runs.

The writer of ``zoo export --format gguf``; `zoo.models.llama.gguf` reads such files back and holds the
names both share (llama.cpp's tensor names, its rotary permutation of the query and key rows). The file
carries llama.cpp's ``llama`` architecture: its hyper-parameters (``llama.*``), the weights under
llama.cpp's names, and what the caller adds: ``zoo export`` adds the tokenizer and the chat template
(`zoo.data.gguf_tokenizer.write_gguf_tokenizer`; the data floor sits above this one, so the writer takes
it as a function). Writing needs the optional ``gguf`` package (the ``gguf`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from zoo.io import atomic_write
from zoo.models.llama.convert import check_exportable
from zoo.models.llama.gguf import LAYER_KEYS, TOP_KEYS, import_gguf, permute

if TYPE_CHECKING:
    from gguf import GGUFWriter

    from zoo.models.llama.model import Llama

GGUF_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
"""``--gguf_type`` -> the ``gguf.GGMLQuantizationType`` of the matrices (norms stay F32, as in llama.cpp)."""
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def save_gguf(
    model: Llama,
    path: str | os.PathLike,
    *,
    add_tokenizer: Callable[..., None],
    gguf_type: str = "f32",
) -> Path:
    """Write ``model`` and its tokenizer as one GGUF file (atomically: `zoo.io.atomic_write`).

    Args:
        model: The Llama (LoRA adapters merged: `zoo.nn.lora.merge_lora`).
        path: The ``.gguf`` file to write; an existing one is replaced.
        add_tokenizer: ``add_tokenizer(writer, vocab_size=)`` adds the ``tokenizer.*`` keys (the
            vocabulary padded to the model's ``vocab_size``), e.g. a `functools.partial` of
            `zoo.data.gguf_tokenizer.write_gguf_tokenizer` with the tokenizer, its special tokens and
            chat template.
        gguf_type: The matrices' type, a key of `GGUF_TYPES`: ``f32`` (exact), ``f16``, ``bf16`` or
            ``q8_0`` (a matrix whose rows do not split into Q8_0's 32-value blocks is written F16, as
            llama.cpp's converter does).

    Raises:
        ImportError: No ``gguf`` package (one line: how to install it).
        ValueError: An architecture llama.cpp's ``llama`` does not compute (positions other than rotary),
            a tokenizer it cannot read, or an unknown ``gguf_type``.
    """
    gguf = import_gguf("writing")
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    args = check_exportable(model.spec["init_args"] if model.spec else None)
    writer = gguf.GGUFWriter(None, "llama")
    _add_hyper_parameters(writer, model, args)
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[gguf_type]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, vocab_size=args["vocab_size"])
    kind = gguf.GGMLQuantizationType[GGUF_TYPES[gguf_type]]
    for name, weight in gguf_tensors(model, args).items():
        data, raw = _encode(weight, kind, gguf)
        writer.add_tensor(name, data, raw_dtype=raw)

    def write(f: Any) -> None:
        writer.write_header_to_file(Path(f.name))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(Path(path).expanduser(), write)


def _add_hyper_parameters(writer: GGUFWriter, model: Llama, args: dict[str, Any]) -> None:
    """The ``llama.*`` keys llama.cpp builds the network from."""
    attn = model.decoder.layers[0].self_attn
    writer.add_context_length(args["max_seq_len"])
    writer.add_embedding_length(args["embed_dim"])
    writer.add_block_count(args["num_layers"])
    writer.add_feed_forward_length(model.decoder.layers[0].mlp.gate_proj.out_features)
    writer.add_head_count(attn.num_heads)
    writer.add_head_count_kv(attn.num_kv_heads)
    writer.add_rope_dimension_count(attn.head_dim)
    writer.add_rope_freq_base(args["rope_theta"])
    writer.add_layer_norm_rms_eps(args["norm_eps"])
    writer.add_vocab_size(args["vocab_size"])


def gguf_tensors(model: Llama, args: dict[str, Any]) -> dict[str, Tensor]:
    """The model's weights by llama.cpp's names, query and key rows permuted (`permute`); no
    ``output.weight`` when the output layer is tied to the embedding (llama.cpp then reuses it)."""
    ours = model.state_dict()
    theirs = {t: ours[m] for m, t in TOP_KEYS.items()}
    attn = model.decoder.layers[0].self_attn
    heads = {"attn_q.weight": attn.num_heads, "attn_k.weight": attn.num_kv_heads}
    for i in range(args["num_layers"]):
        for mine, t in LAYER_KEYS.items():
            weight = ours[f"decoder.layers.{i}.{mine}"]
            theirs[f"blk.{i}.{t}"] = permute(weight, heads[t]) if t in heads else weight
    if not args["tie_weights"]:
        theirs["output.weight"] = ours["lm_head.weight"]
    return theirs


def _encode(weight: Tensor, kind: Any, gguf: Any) -> tuple[np.ndarray, Any]:
    """``weight`` as ``kind``'s data for ``GGUFWriter.add_tensor`` and the type to declare: vectors (the
    norms) stay F32; a matrix that Q8_0's blocks do not tile is F16."""
    array = weight.detach().float().cpu().numpy()  # (out, in): GGUF lists it innermost first
    if array.ndim == 1:
        kind = gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[kind]
    if array.shape[-1] % block:
        kind = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(array, kind), kind
