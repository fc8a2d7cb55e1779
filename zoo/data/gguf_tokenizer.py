"""The tokenizer a GGUF file describes, as a ``tokenizers.Tokenizer``.

A GGUF holds no ``tokenizer.json``: llama.cpp keeps the vocabulary, merges, token kinds and special ids as
``tokenizer.ggml.*`` metadata and names the text splitting by a key (``tokenizer.ggml.pre``) whose rules
live in llama.cpp's code. zoo rebuilds byte-level BPE files (``tokenizer.ggml.model = "gpt2"``, GPT-2,
SmolLM, StarCoder, Llama 3 ...) with the splitting llama.cpp applies for that key, so ids are the ones
the model was trained with; a key zoo does not know is refused rather than guessed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from zoo.models.llama.gguf import field, open_gguf

if TYPE_CHECKING:
    from gguf import GGUFReader

CONTROL, USER_DEFINED = 3, 4
"""``tokenizer.ggml.token_type`` values: special tokens (``<|im_start|>``) and plain added tokens."""

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
