"""The tokenizer a GGUF file describes, as a ``tokenizers.Tokenizer``.

A GGUF holds no ``tokenizer.json``: llama.cpp keeps the vocabulary, merges, token kinds and special ids as
``tokenizer.ggml.*`` metadata and names the text splitting by a key (``tokenizer.ggml.pre``) whose rules
live in llama.cpp's code. zoo rebuilds byte-level BPE files (``tokenizer.ggml.model = "gpt2"``, GPT-2,
SmolLM, StarCoder, Llama 3 ...) with the splitting llama.cpp applies for that key, so ids are the ones
the model was trained with; a key zoo does not know is refused rather than guessed. `write_gguf_tokenizer`
goes the other way (``zoo export --format gguf``): a zoo tokenizer as that metadata, its splitting named by
the key whose rules it follows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from zoo.models.llama.gguf import field, open_gguf

if TYPE_CHECKING:
    from gguf import GGUFReader, GGUFWriter

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
"""``tokenizer.ggml.token_type`` values: vocabulary entries, special tokens (``<|im_start|>``), plain added
tokens, and the padding entries of an embedding larger than the vocabulary."""

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's split, then bytes


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _llama3() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# tokenizer.ggml.pre -> the splitting llama.cpp's llama-vocab.cpp applies for it
PRE_TOKENIZERS = {
    **dict.fromkeys(("gpt2", "mpt", "olmo", "jais"), _gpt2),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"), _digits_then_gpt2),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx"), _llama3),
}
_ROLES = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


def load_gguf_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The byte-level BPE tokenizer of a GGUF file (``.gguf`` or ``python:<package>``): its vocabulary and
    merges, llama.cpp's text splitting for its ``tokenizer.ggml.pre``, control tokens (``<|im_start|>``)
    as special tokens, user-defined ones as added tokens, and BOS/EOS added when the file says so.

    Raises:
        ImportError: No ``gguf`` package.
        ValueError: Not a byte-level BPE file, or a splitting zoo does not know; the message names the
            file and the key.
    """
    source, reader = open_gguf(path)
    return tokenizer_from_reader(reader, source)


def gguf_special_tokens(path: str | os.PathLike) -> dict[str, str]:
    """The file's special tokens by role (``bos``, ``eos``, ``unk``, ``pad``, those it names), as
    `zoo.models.hf_io.tokenizer_files` takes them."""
    source, reader = open_gguf(path)
    return special_tokens_from_reader(reader, source)


def special_tokens_from_reader(reader: GGUFReader, source: Path) -> dict[str, str]:
    """`gguf_special_tokens` on an open reader."""
    tokens = field(reader, "tokenizer.ggml.tokens", source)
    ids = {role: field(reader, f"tokenizer.ggml.{key}", source, None) for role, key in _ROLES.items()}
    return {role: tokens[i] for role, i in ids.items() if i is not None}


def tokenizer_from_reader(reader: GGUFReader, source: Path) -> Tokenizer:
    """`load_gguf_tokenizer` on an open reader."""
    kind = field(reader, "tokenizer.ggml.model", source)
    if kind != "gpt2":
        raise ValueError(
            f"{source}: tokenizer.ggml.model={kind!r}; zoo rebuilds byte-level BPE ('gpt2') only"
        )
    pre = field(reader, "tokenizer.ggml.pre", source, "(missing)")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(
            f"{source}: tokenizer.ggml.pre={pre!r} is a text splitting zoo does not know; known: "
            f"{', '.join(sorted(PRE_TOKENIZERS))}"
        )
    tokens = field(reader, "tokenizer.ggml.tokens", source)
    kinds = field(reader, "tokenizer.ggml.token_type", source, [1] * len(tokens))
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    in_bytes = [set(t) <= alphabet for t in tokens]
    spelled = [t if ok else _byte_spelling(t) for t, ok in zip(tokens, in_bytes)]  # e.g. a raw space
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", source)]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(spelled)}, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    # matched whole in the text; one outside the byte alphabet is a llama.cpp mislabel that would need a
    # new id (transformers skips it too)
    control = [t for t, k, ok in zip(tokens, kinds, in_bytes) if k == CONTROL and ok]
    added = [t for t, k, ok in zip(tokens, kinds, in_bytes) if k == USER_DEFINED and ok]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    tok.add_tokens([AddedToken(t, normalized=False) for t in added])
    _add_bos_eos(tok, reader, source, tokens)
    return tok


def _byte_spelling(token: str) -> str:
    """``token``'s UTF-8 bytes in GPT-2's printable stand-ins, spelled by ``tokenizers`` itself."""
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(token)
    return "".join(piece for piece, _ in pieces)


def _add_bos_eos(tok: Tokenizer, reader: GGUFReader, source: Path, tokens: list[str]) -> None:
    """A post-processor adding BOS and/or EOS when ``tokenizer.ggml.add_bos_token``/``add_eos_token``
    say so (absent: not added, as transformers reads these files)."""
    ends = {}
    for role in ("bos", "eos"):
        if field(reader, f"tokenizer.ggml.add_{role}_token", source, False):
            index = field(reader, f"tokenizer.ggml.{_ROLES[role]}", source)  # required now
            ends[role] = (tokens[index], index)
    if ends:
        bos, eos = ([ends[role][0]] if role in ends else [] for role in ("bos", "eos"))
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join([*bos, "$A", *eos]), special_tokens=list(dict(ends.values()).items())
        )


def write_gguf_tokenizer(
    writer: GGUFWriter,
    tokenizer: Tokenizer,
    *,
    vocab_size: int,
    special_tokens: Mapping[str, str],
    chat_template: str | None = None,
) -> None:
    """Add ``tokenizer`` to a GGUF file being written, as `load_gguf_tokenizer` and llama.cpp read it: the
    vocabulary (byte-level spellings; added tokens as written, special ones as control tokens), merges, the
    ``tokenizer.ggml.pre`` key of its splitting, the ids of its ``bos``/``eos``/``unk``/``pad`` tokens,
    whether it adds BOS/EOS itself, and the chat template (jinja source).

    Args:
        writer: A ``gguf.GGUFWriter`` before its key-value data is written.
        tokenizer: A byte-level BPE tokenizer (zoo's, GPT-2's, or one `load_gguf_tokenizer` built).
        vocab_size: The model's number of token ids; ids the tokenizer lacks become unused ``[PAD<id>]``
            entries (llama.cpp needs one token per embedding row).
        special_tokens: Token strings by role (``bos``, ``eos``, ``unk``, ``pad``; others are not GGUF keys).
        chat_template: ``tokenizer.chat_template``; ``None``: none written.

    Raises:
        ValueError: Not a byte-level BPE tokenizer, a splitting llama.cpp has no key for, a normalizer, or
            more ids than ``vocab_size``; the message says which.
    """
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError("GGUF export writes byte-level BPE tokenizers (llama.cpp's 'gpt2' model) only")
    if spec.get("normalizer") is not None:
        raise ValueError(
            f"the tokenizer has a normalizer ({spec['normalizer'].get('type')}); llama.cpp applies none"
        )
    pre = gguf_pre_name(spec.get("pre_tokenizer"))
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ValueError(f"the tokenizer has {size} ids but the model's embedding only {vocab_size}")
    added = {t.content: t.special for t in tokenizer.get_added_tokens_decoder().values()}
    tokens, kinds = [], []
    for i in range(vocab_size):
        token = tokenizer.id_to_token(i) if i < size else None
        tokens.append(f"[PAD{i}]" if token is None else token)
        kinds.append(
            UNUSED if token is None else {True: CONTROL, False: USER_DEFINED}.get(added.get(token), NORMAL)
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    for role, key in _ROLES.items():
        index = tokenizer.token_to_id(special_tokens[role]) if role in special_tokens else None
        if index is not None:
            writer.add_uint32(f"tokenizer.ggml.{key}", index)
    for role, added_too in _adds_bos_eos(tokenizer, special_tokens).items():
        writer.add_bool(f"tokenizer.ggml.add_{role}_token", added_too)
    if chat_template:
        writer.add_chat_template(chat_template)


def gguf_pre_name(pre_tokenizer: dict[str, Any] | None) -> str:
    """The ``tokenizer.ggml.pre`` key whose splitting (`PRE_TOKENIZERS`) is ``pre_tokenizer`` (a
    tokenizer.json's ``pre_tokenizer`` entry), the first of equal ones (``gpt2``, ``smollm``, ``llama-bpe``).

    Raises:
        ValueError: No key splits text this way.
    """
    for name, build in PRE_TOKENIZERS.items():
        if _without_offsets(_serialised(build())) == _without_offsets(pre_tokenizer):
            return name
    raise ValueError(
        "the tokenizer's text splitting is none llama.cpp names (its tokenizer.ggml.pre keys split as GPT-2, "
        "as SmolLM/StarCoder (digits apart) or as Llama 3); GGUF export cannot write it"
    )


def _serialised(pre: pre_tokenizers.PreTokenizer) -> dict[str, Any]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    return json.loads(tok.to_str())["pre_tokenizer"]


def _without_offsets(value: Any) -> Any:
    """A pre-tokenizer's JSON without ``trim_offsets`` (offsets only; the split and the ids are the same)."""
    if isinstance(value, dict):
        return {k: _without_offsets(v) for k, v in value.items() if k != "trim_offsets"}
    if isinstance(value, list):
        return [_without_offsets(v) for v in value]
    return value


def _adds_bos_eos(tokenizer: Tokenizer, special_tokens: Mapping[str, str]) -> dict[str, bool]:
    """Whether encoding adds the ``bos``/``eos`` token itself (its post-processor), by encoding a word."""
    plain, full = tokenizer.encode("a", add_special_tokens=False).ids, tokenizer.encode("a").ids
    ids = {
        role: tokenizer.token_to_id(special_tokens[role]) for role in ("bos", "eos") if role in special_tokens
    }
    return {
        "bos": "bos" in ids and len(full) > len(plain) and full[0] == ids["bos"],
        "eos": "eos" in ids and len(full) > len(plain) and full[-1] == ids["eos"],
    }
