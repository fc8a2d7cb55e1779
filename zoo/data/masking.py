"""Dynamic masking for masked language modelling: pad a list of examples and mask it, BERT's way.

Every draw of a batch masks afresh (RoBERTa's dynamic masking), yet reproducibly: each example's mask
comes from its own ``torch.Generator`` seeded by ``(seed, epoch, index)``, so it does not depend on the
batch it lands in, the number of ranks, the worker process or any global RNG, and changes every epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from zoo.data.batch import IGNORE_INDEX
from zoo.data.collate import pack_batch
from zoo.data.wordpiece import CONTINUING_SUBWORD_PREFIX, special_token_ids
from zoo.errors import check_positive

#: Of the chosen tokens, this share becomes [MASK] and half the rest a random token (BERT's 80/10/10).
MASK_SHARE = 0.8
RANDOM_SHARE = 0.1


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator whose stream is a function of ``(seed, epoch, index)`` only."""
    state = np.random.SeedSequence((seed, epoch, index)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)  # manual_seed takes a non-negative int64


def check_mlm_probability(owner: str, mlm_probability: float) -> None:
    """``mlm_probability`` is a share strictly between 0 and 1 (one that masks nothing or everything
    teaches nothing).

    Raises:
        ValueError: ``"{owner}: mlm_probability must be in (0, 1), got 1.0"``.
    """
    ok = isinstance(mlm_probability, int | float) and not isinstance(mlm_probability, bool)
    if not ok or not 0 < mlm_probability < 1:
        raise ValueError(f"{owner}: mlm_probability must be in (0, 1), got {mlm_probability!r}")


class MLMCollator:
    """Pad examples to the longest one and choose masked-LM targets.

    Of the maskable (non-special) tokens of each example, exactly
    ``max(1, round(mlm_probability * n))`` are chosen, like Google's ``create_pretraining_data``. A chosen
    token becomes ``[MASK]`` with probability 0.8, a random non-special token with 0.1 and stays as it is
    with 0.1; its label is the original id, every other label is ``-100``. With ``whole_word`` a word's
    ``##`` continuation pieces are chosen together with the piece that starts it, and a word that would
    overshoot the count is skipped for a later one (when every word would, one word is chosen anyway).

    Each example is a mapping with ``input_ids`` (1-D ids), ``index`` (its dataset index, which seeds its
    mask), optionally ``epoch`` (default 0), ``token_type_ids`` and ``next_sentence_label``.

    Args:
        mask_token_id: Id of ``[MASK]``.
        pad_token_id: Id of ``[PAD]``, used for padding ``input_ids``.
        special_token_ids: Ids never chosen and never drawn as random replacements (``[PAD] [UNK] [CLS]
            [SEP] [MASK]``; like Hugging Face's collator, and unlike Google's script, ``[UNK]`` is never a
            target).
        vocab_size: Number of token ids; random replacements are drawn from ``range(vocab_size)`` minus
            ``special_token_ids``.
        continuation_ids: Ids of ``##`` continuation pieces (needed by ``whole_word``).
        mlm_probability: Share of maskable tokens chosen per example.
        whole_word: Choose whole words rather than single pieces.
        pad_to_multiple_of: Round the padded length up to a multiple of this (8 suits tensor cores).
        max_length: Never pad beyond this length (the model's positions) when rounding up.
        seed: Base seed of every mask.
    """

    def __init__(
        self,
        *,
        mask_token_id: int,
        pad_token_id: int,
        special_token_ids: Sequence[int],
        vocab_size: int,
        continuation_ids: Sequence[int] = (),
        mlm_probability: float = 0.15,
        whole_word: bool = False,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
        seed: int = 0,
    ) -> None:
        check_positive(
            "MLMCollator", vocab_size=vocab_size, pad_to_multiple_of=pad_to_multiple_of, max_length=max_length
        )
        check_mlm_probability("MLMCollator", mlm_probability)
        if whole_word and not continuation_ids:
            raise ValueError("whole_word needs the ids of the ## continuation pieces (continuation_ids)")
        special = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)
        replacements = torch.ones(vocab_size, dtype=torch.bool)
        replacements[special[special < vocab_size]] = False
        if not replacements.any():
            raise ValueError("every id is special: no token to draw as a random replacement")
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.special_ids = special
        self.replacement_ids = replacements.nonzero().squeeze(1)  # (R,)
        self.continuation_ids = torch.tensor(sorted(set(continuation_ids)), dtype=torch.long)
        self.mlm_probability = mlm_probability
        self.whole_word = whole_word
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length
        self.seed = seed

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, **kwargs: Any) -> MLMCollator:
        """Take the special and ``##`` continuation ids from a BERT WordPiece tokenizer; ``kwargs`` are
        the remaining constructor arguments (``mlm_probability``, ``whole_word``, ``seed``, ...)."""
        ids = special_token_ids(tokenizer)
        vocab = tokenizer.get_vocab()
        return cls(
            mask_token_id=ids["mask"],
            pad_token_id=ids["pad"],
            special_token_ids=list(ids.values()),
            vocab_size=tokenizer.get_vocab_size(),
            continuation_ids=[i for t, i in vocab.items() if t.startswith(CONTINUING_SUBWORD_PREFIX)],
            **kwargs,
        )

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """Batch of ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` (all (B, T)) and, when
        the examples have it, ``next_sentence_label`` (B,)."""
        masked = self.masked_examples(examples)
        T = self._padded_length(max(len(m["input_ids"]) for m in masked))
        B = len(masked)
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((B, T), dtype=torch.long)
        token_type_ids = torch.zeros((B, T), dtype=torch.long)
        for b, m in enumerate(masked):
            n = len(m["input_ids"])
            input_ids[b, :n], labels[b, :n], token_type_ids[b, :n] = (
                m["input_ids"],
                m["labels"],
                m["token_type_ids"],
            )
            attention_mask[b, :n] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "labels": labels,
        }
        return batch | _next_sentence_labels(examples)

    def masked_examples(self, examples: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Each example masked with its own seeded draw, as ``input_ids``, ``labels``, ``token_type_ids``
        (T,) each."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        out = []
        for example in examples:
            if "index" not in example:
                raise KeyError("each example needs its dataset 'index' to seed its mask")
            ids = torch.as_tensor(np.asarray(example["input_ids"]), dtype=torch.long)
            generator = example_generator(self.seed, int(example.get("epoch", 0)), int(example["index"]))
            masked, labels = self.mask(ids, generator)
            types = example.get("token_type_ids")
            types = torch.zeros_like(ids) if types is None else torch.as_tensor(np.asarray(types))
            out.append({"input_ids": masked, "labels": labels, "token_type_ids": types})
        return out

    def mask(self, ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Mask one example: ``ids`` (T,) -> ``(masked ids (T,), labels (T,))``."""
        chosen = self._choose(ids, generator)  # (T,) bool
        labels = torch.where(chosen, ids, IGNORE_INDEX)
        action = torch.rand(ids.shape, generator=generator)  # one draw per position keeps streams aligned
        random_ids = self.replacement_ids[
            torch.randint(len(self.replacement_ids), ids.shape, generator=generator)
        ]
        masked = ids.clone()
        masked[chosen & (action < MASK_SHARE)] = self.mask_token_id
        use_random = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
        masked[use_random] = random_ids[use_random]
        return masked, labels

    def _choose(self, ids: Tensor, generator: torch.Generator) -> Tensor:
        maskable = ~torch.isin(ids, self.special_ids)  # (T,)
        positions = maskable.nonzero().squeeze(1)  # (M,)
        chosen = torch.zeros_like(maskable)
        if len(positions) == 0:
            return chosen
        target = max(1, int(round(len(positions) * self.mlm_probability)))
        if not self.whole_word:
            order = torch.randperm(len(positions), generator=generator)
            chosen[positions[order[:target]]] = True
            return chosen
        # a continuation piece joins the word before it when that word is maskable too
        starts = ~torch.isin(ids[positions], self.continuation_ids)
        starts[0] = True
        starts[1:] |= positions[1:] != positions[:-1] + 1
        word_of = torch.cumsum(starts.long(), 0) - 1  # (M,) word number of each maskable piece
        lengths = torch.bincount(word_of).tolist()
        order = torch.randperm(len(lengths), generator=generator).tolist()
        words: list[int] = []
        count = 0
        for w in order:
            if count + lengths[w] > target:
                continue
            words.append(w)
            count += lengths[w]
            if count == target:
                break
        words = words or order[:1]  # every word is longer than the target: still predict one
        chosen[positions[torch.isin(word_of, torch.tensor(words, dtype=torch.long))]] = True
        return chosen

    def _padded_length(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        if m is None:
            return longest
        padded = -(-longest // m) * m
        return padded if self.max_length is None else max(longest, min(padded, self.max_length))


class PackedMLMCollator(MLMCollator):
    """`MLMCollator`'s masks (the same draw per example), with the examples packed several to a row
    (`zoo.data.collate.pack_batch`): ``document_ids`` (R, W) and ``sequence_spans`` (N, 3) keep them apart,
    ``next_sentence_label`` stays (N,) in example order. ``pad_to_multiple_of`` does not apply."""

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        items = [{key: value.tolist() for key, value in m.items()} for m in self.masked_examples(examples)]
        batch = pack_batch(items, pad_token_id=self.pad_token_id, sequence_keys={"labels": IGNORE_INDEX})
        return batch | _next_sentence_labels(examples)


def _next_sentence_labels(examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    if "next_sentence_label" not in examples[0]:
        return {}
    labels = [int(e["next_sentence_label"]) for e in examples]
    return {"next_sentence_label": torch.tensor(labels, dtype=torch.long)}
