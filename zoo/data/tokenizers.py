"""Tokenizers for causal language modelling, built on the ``tokenizers`` library.

* ``"char"``: one id per character seen in the corpus (nanoGPT's shakespeare-char), plus ``<unk>``.
* ``"bpe"``: byte-level BPE (GPT-2's scheme) trained on the corpus, with ``<|endoftext|>``.
* a path: a ``tokenizer.json`` file, or a directory holding ``tokenizer.json`` or GPT-2's
  ``vocab.json`` + ``merges.txt``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

UNK = "<unk>"
EOT = "<|endoftext|>"
TOKENIZER_KINDS = ("char", "bpe")
ENCODE_CHARS = 4096
"""Characters per encoding chunk (`text_chunks` size) when a corpus is tokenized: the chunks, not the
batches or processes, decide the tokens, so every way of encoding a corpus uses this size."""


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
    """Load ``tokenizer.json``, a directory with it or with GPT-2's ``vocab.json`` + ``merges.txt``, or the
    tokenizer of a GGUF model file (``.gguf``, or ``python:<package>`` holding one;
    `zoo.data.gguf_tokenizer.load_gguf_tokenizer`).

    Padding or truncation saved in a ``tokenizer.json`` is switched off: the data modules decide lengths.
    """
    from zoo.models.pretrained import is_gguf

    if is_gguf(path):
        from zoo.data.gguf_tokenizer import load_gguf_tokenizer

        return load_gguf_tokenizer(path)
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


def unk_id(tok: Tokenizer) -> int | None:
    """Id of the token that stands for text the vocabulary cannot represent (``<unk>``), if the model has one.

    Byte-level BPE (``"bpe"``, GPT-2's vocabulary) has none: every byte is in its vocabulary.
    """
    token = getattr(tok.model, "unk_token", None)
    return tok.token_to_id(token) if token else None


class UnknownTally:
    """Characters a tokenizer could only encode as its unknown token, counted while a corpus is encoded.

    Feed it every encoded batch with `add`; `message` is the one-line report, and `as_dict` /
    `from_dict` let the count travel in a token cache's metadata.

    Args:
        unk: The tokenizer's unknown id (`unk_id`); ``None`` counts nothing.
    """

    def __init__(self, unk: int | None) -> None:
        self.unk = unk
        self.chars: Counter[str] = Counter()
        self.first: str | None = None  # "file:line" of the first one

    @property
    def count(self) -> int:
        return sum(self.chars.values())

    def add(
        self, encodings: Sequence[Encoding], chunks: Sequence[str], where: Sequence[tuple[str, int]]
    ) -> None:
        """Count the unknown tokens of ``encodings`` (of ``chunks``; chunk ``i`` starts at line
        ``where[i][1]`` of file ``where[i][0]``)."""
        if self.unk is None:
            return
        for encoding, chunk, (file, line) in zip(encodings, chunks, where):
            ids = encoding.ids
            if self.unk not in ids:  # the common case, at C speed
                continue
            for i in (i for i, token in enumerate(ids) if token == self.unk):
                start, end = encoding.offsets[i]
                self.chars.update(chunk[start:end] or "?")  # an unknown token may span several characters
                if self.first is None:
                    row = line + chunk.count("\n", 0, start)
                    self.first = f"{file}:{row}"

    def message(self, corpus: str) -> str:
        """One line: ``"CORPUS: the tokenizer cannot represent 3 character(s) ('€' x2, 'ж' x1), first at
        FILE:LINE; ..."``."""
        shown = ", ".join(f"{c!r} x{n}" for c, n in self.chars.most_common(10))
        more = f" and {len(self.chars) - 10} more kinds" if len(self.chars) > 10 else ""
        return (
            f"{corpus}: the tokenizer cannot represent {self.count} character(s) ({shown}{more}), first at "
            f"{self.first}; they are read as <unk> and never scored or trained on (their labels are -100)"
        )

    def update(self, other: UnknownTally) -> None:
        """Add the counts of ``other``, a tally of text that comes after this one's."""
        self.chars.update(other.chars)
        self.first = self.first or other.first

    def as_dict(self) -> dict[str, Any]:
        return {"chars": dict(self.chars), "first": self.first}

    @classmethod
    def from_dict(cls, unk: int | None, saved: dict[str, Any]) -> UnknownTally:
        tally = cls(unk)
        tally.chars.update(saved.get("chars", {}))
        tally.first = saved.get("first")
        return tally


def text_chunks(text: str, size: int = 1 << 16) -> Iterator[str]:
    """Split ``text`` at line ends into pieces of about ``size`` characters, for batched encoding."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def stream_chunks(pieces: Iterable[str], size: int = 1 << 16) -> Iterator[str]:
    """`text_chunks` of ``"".join(pieces)``, chunk for chunk, holding only one piece and one chunk at a
    time: the chunks of a file read in pieces encode exactly as those of the whole file."""
    text, start = "", 0
    for piece in pieces:
        text, start = text[start:] + piece, 0
        while (end := text.find("\n", start + size)) >= 0:
            yield text[start : end + 1]
            start = end + 1
    if start < len(text):
        yield text[start:]
