"""Fill-mask input and output for ``zoo predict`` with a masked-LM: sentences with ``[MASK]`` in, one
tab-separated row per filler out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from tokenizers import Tokenizer

from zoo.data.corpus import read_text
from zoo.data.wordpiece import CONTINUING_SUBWORD_PREFIX, special_token_ids

FILL_MASK_COLUMNS = ("line", "mask", "token", "word", "probability")
"""The tab-separated columns `BertPretrainingDataModule.format_prediction` writes (its first row)."""


class FillMaskLine(NamedTuple):
    """One sentence of a fill-mask file: its line number (from 1) and its ids, ``[CLS] ... [SEP]``."""

    line: int
    input_ids: list[int]


def read_fill_mask_file(path: Path, tokenizer: Tokenizer, *, max_seq_len: int) -> list[FillMaskLine]:
    """The sentences of a fill-mask file: one per line, each with one or more ``[MASK]`` tokens (written
    exactly so: the tokenizer's mask token). Blank lines are skipped.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: ``path:LINE: ...`` for a line without a mask or longer than ``max_seq_len`` tokens
            ([CLS] and [SEP] included); a file without a sentence.
    """
    if not path.is_file():
        raise FileNotFoundError(f"predict_file {path} not found")
    mask_id = special_token_ids(tokenizer)["mask"]
    out = []
    for number, text in enumerate(read_text(path).split("\n"), start=1):
        if not text.strip():
            continue
        ids = tokenizer.encode(text.rstrip("\r")).ids
        if mask_id not in ids:
            raise ValueError(f"{path}:{number}: no [MASK] to fill (write each mask as [MASK], upper case)")
        if len(ids) > max_seq_len:
            raise ValueError(
                f"{path}:{number}: {len(ids)} tokens with [CLS] and [SEP], more than max_seq_len="
                f"{max_seq_len}; shorten the line"
            )
        out.append(FillMaskLine(number, ids))
    if not out:
        raise ValueError(f"{path}: no sentence to fill, every line is blank")
    return out


def format_fill_mask(
    line: FillMaskLine, fillers: Sequence[Sequence[tuple[int, float]]], tokenizer: Tokenizer
) -> str:
    """Rows ``line, mask, token, word, probability`` (tab-separated) for each filler of each mask.

    ``mask`` counts the line's masks from 1; ``token`` is the vocabulary piece; ``word`` is the word it
    makes: the token itself, or for a ``##`` continuation piece the input's word before the mask joined
    with it (``walk [MASK]`` filled with ``##ed`` gives ``walked``).
    """
    tokens = [tokenizer.id_to_token(i) for i in line.input_ids]
    mask_id = special_token_ids(tokenizer)["mask"]
    positions = [p for p, i in enumerate(line.input_ids) if i == mask_id]
    if len(positions) != len(fillers):
        raise RuntimeError(f"line {line.line}: {len(positions)} masks but fillers for {len(fillers)}")
    rows = []
    for mask, (position, candidates) in enumerate(zip(positions, fillers), start=1):
        for token_id, probability in candidates:
            token = tokenizer.id_to_token(token_id)
            word = _completed_word(tokens, position, token)
            rows.append(f"{line.line}\t{mask}\t{token}\t{word}\t{probability:.6g}\n")
    return "".join(rows)


def _completed_word(tokens: list[str], position: int, filler: str) -> str:
    if not filler.startswith(CONTINUING_SUBWORD_PREFIX):
        return filler
    start = position - 1  # back to the start of the word the filler continues
    while start > 0 and tokens[start].startswith(CONTINUING_SUBWORD_PREFIX):
        start -= 1
    if start < 0 or tokens[start] in ("[CLS]", "[SEP]", "[PAD]"):
        start += 1
    pieces = [*tokens[start:position], filler]
    return "".join(t.removeprefix(CONTINUING_SUBWORD_PREFIX) for t in pieces)
