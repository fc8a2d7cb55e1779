"""Next-sentence-prediction instances, built the way Google's ``create_pretraining_data.py`` builds them.

Consecutive sentences of one document fill a target length (shorter with probability ``short_seq_prob``),
are cut into segment A and B, and half the time B is replaced by a span of a different document
(``next_sentence_label`` 1, Hugging Face's convention; 0 means B really follows A). ``dupe_factor``
passes over the corpus give differently cut instances; every random choice comes from a generator seeded
by ``(seed, pass, document)``.

One deviation keeps the labels balanced: in Google's script a chunk of one sentence can only get a
random B, which tilts the labels towards "random" (54-57% on UD EWT + WikiText at 128-64 tokens). Here a
chunk is not cut while it holds one sentence, nor when that would leave a document's last sentence alone,
and a lone sentence that remains (a one-sentence document, or the last sentence put back after a random
B) is left out of that pass. `zoo.data.pretraining` writes the random share into its cache's ``meta.json``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

NSP_OFF = "turn next-sentence prediction off (nsp: false on both data.init_args and model.init_args)"


def create_instances(
    documents: Sequence[Sequence[np.ndarray]],
    *,
    max_seq_len: int,
    cls_id: int,
    sep_id: int,
    nsp: bool = True,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int | Sequence[int] = 0,
) -> dict[str, np.ndarray]:
    """Pretraining instances from tokenized documents (lists of sentences of token ids).

    Returns flat arrays: ``input_ids`` (all instances concatenated), ``offsets`` (N+1 boundaries),
    ``segment_a_lengths`` (positions of ``[CLS] A [SEP]``; the rest is segment B) and, with ``nsp``,
    ``next_sentence_labels`` (N,). Without ``nsp`` an instance is ``[CLS] A [SEP]`` with A filling the
    target length (RoBERTa's doc-sentences input).
    """
    if nsp and len(documents) < 2:
        raise ValueError(
            f"next-sentence prediction needs at least 2 documents (a random B must come from another "
            f"document) but got {len(documents)}; add documents or {NSP_OFF}"
        )
    seed = (seed,) if isinstance(seed, int) else tuple(seed)
    max_tokens = max_seq_len - 3 if nsp else max_seq_len - 2
    pieces: list[np.ndarray] = []
    lengths, a_lengths, labels = [], [], []
    cls, sep = np.array([cls_id]), np.array([sep_id])
    for dupe in range(dupe_factor):
        for index in range(len(documents)):
            rng = np.random.default_rng((*seed, dupe, index))
            for a, b, is_random in _document_instances(
                documents, index, rng, max_tokens, short_seq_prob, nsp
            ):
                parts = [cls, a, sep] if b is None else [cls, a, sep, b, sep]
                pieces.extend(parts)
                lengths.append(sum(len(p) for p in parts))
                a_lengths.append(len(a) + 2)
                labels.append(int(is_random))
    if not lengths:
        raise ValueError(
            f"no instances: each of the {len(documents)} documents has a single sentence, and a sentence "
            "pair needs two; put several sentences per document (a blank line ends a document), or " + NSP_OFF
        )
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = {
        "input_ids": np.concatenate(pieces),
        "offsets": offsets,
        "segment_a_lengths": np.asarray(a_lengths, dtype=np.int32),
    }
    if nsp:
        out["next_sentence_labels"] = np.asarray(labels, dtype=np.int8)
    return out


def _document_instances(
    documents: Sequence[Sequence[np.ndarray]],
    index: int,
    rng: np.random.Generator,
    max_tokens: int,
    short_seq_prob: float,
    nsp: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray | None, bool]]:
    """Google's ``create_instances_from_document``: yields ``(A, B or None, B is random)``."""
    document = documents[index]
    last = len(document) - 1
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    chunk: list[np.ndarray] = []
    length, i = 0, 0
    while i <= last:
        chunk.append(document[i])
        length += len(document[i])
        full = length >= target and (not nsp or (len(chunk) >= 2 and i != last - 1))
        if i == last or full:
            if not nsp:
                yield _truncate(np.concatenate(chunk), max_tokens, rng), None, False
            elif len(chunk) >= 2:  # a lone sentence could only get a random B; it is left out
                a_end = int(rng.integers(1, len(chunk)))
                a = np.concatenate(chunk[:a_end])
                is_random = rng.random() < 0.5
                if is_random:
                    b = _random_span(documents, index, rng, target - len(a))
                    i -= len(chunk) - a_end  # the unused sentences start the next chunk
                else:
                    b = np.concatenate(chunk[a_end:])
                yield *_truncate_pair(a, b, max_tokens, rng), is_random
            chunk, length = [], 0
        i += 1


def _random_span(
    documents: Sequence[Sequence[np.ndarray]], index: int, rng: np.random.Generator, target: int
) -> np.ndarray:
    other = int(rng.integers(len(documents) - 1))
    other += other >= index  # uniform over the other documents
    document = documents[other]
    span: list[np.ndarray] = []
    n = 0
    for sentence in document[int(rng.integers(len(document))) :]:
        span.append(sentence)
        n += len(sentence)
        if n >= target:
            break
    return np.concatenate(span)


def _truncate_pair(
    a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Drop tokens from the longer segment (from its front or back at random) until both fit."""
    bounds = [[0, len(a)], [0, len(b)]]
    excess = len(a) + len(b) - max_tokens
    for coin in rng.random(max(0, excess)):
        longer = bounds[0] if bounds[0][1] - bounds[0][0] > bounds[1][1] - bounds[1][0] else bounds[1]
        if coin < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1
    return a[bounds[0][0] : bounds[0][1]], b[bounds[1][0] : bounds[1][1]]


def _truncate(a: np.ndarray, max_tokens: int, rng: np.random.Generator) -> np.ndarray:
    drop_front = int((rng.random(max(0, len(a) - max_tokens)) < 0.5).sum())
    return a[drop_front : drop_front + max_tokens]
