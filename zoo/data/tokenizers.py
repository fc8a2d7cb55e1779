"""Tokenizers for causal language modelling, built on the ``tokenizers`` library.

* ``"char"``: one id per character seen in the corpus (nanoGPT's shakespeare-char), plus ``<unk>``.
* ``"bpe"``: byte-level BPE (GPT-2's scheme) trained on the corpus, with ``<|endoftext|>``.
* a path: a ``tokenizer.json`` file, or a directory holding ``tokenizer.json`` or GPT-2's
  ``vocab.json`` + ``merges.txt``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

UNK = "<unk>"
EOT = "<|endoftext|>"
TOKENIZER_KINDS = ("char", "bpe")


def train_char_tokenizer(texts: Iterable[str]) -> Tokenizer:
    """A character-level tokenizer whose vocabulary is every character in ``texts`` (sorted) + ``<unk>``."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    if not chars:
        raise ValueError("cannot build a character vocabulary from an empty corpus")
    vocab = {c: i for i, c in enumerate(sorted(chars))}
    vocab[UNK] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char, \n included
    tok.decoder = decoders.Fuse()
    return tok


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) trained on ``texts``; ``<|endoftext|>`` is the last special token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load ``tokenizer.json``, or a directory with it or with GPT-2's ``vocab.json`` + ``merges.txt``.

    Padding or truncation saved in a ``tokenizer.json`` is switched off: the data modules decide lengths.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            p = p / "tokenizer.json"
        elif (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
            tok = Tokenizer(models.BPE.from_file(str(p / "vocab.json"), str(p / "merges.txt")))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            return tok
        else:
            raise FileNotFoundError(f"{p} has neither tokenizer.json nor vocab.json + merges.txt")
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file {p} not found")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as err:
        raise ValueError(f"{p}: not a valid tokenizers JSON file ({err})") from err
    tok.no_padding()
    tok.no_truncation()
    return tok


def eot_id(tok: Tokenizer) -> int | None:
    """Id of ``<|endoftext|>`` if the vocabulary has it (used between documents and as a stop token)."""
    return tok.token_to_id(EOT)


def text_chunks(text: str, size: int = 1 << 16) -> Iterator[str]:
    """Split ``text`` at line ends into pieces of about ``size`` characters, for batched encoding."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end
