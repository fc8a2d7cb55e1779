"""ROUGE-1, ROUGE-2 and ROUGE-L F1 (Lin, 2004) as Google's ``rouge-score`` computes them with
``use_stemmer=True``: torchmetrics' `torchmetrics.text.ROUGEScore` with nltk's Porter stemmer.

Text is lower-cased, every run of characters other than ``a-z0-9`` becomes a space, and tokens longer than
three characters are Porter-stemmed. ROUGE-N is the F1 of clipped n-gram overlap, ROUGE-L the F1 of the
longest common subsequence; a corpus score is the mean of the per-pair F1s, and with several references
the best F1 of each kind counts. The stemmer needs ``nltk`` (``pip install 'lightning-zoo[rouge]'``);
without it building the metric fails with one line saying so. ``tests/tasks/test_rouge.py`` checks
equality with ``rouge_score.rouge_scorer.RougeScorer`` on real DialogSum pairs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.text import ROUGEScore as _TorchmetricsROUGE

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


@functools.cache
def _porter_stemmer():  # noqa: ANN202 - nltk's PorterStemmer; nltk is optional
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError as err:
        raise ImportError(
            "ROUGE stems words as rouge-score does, with nltk's Porter stemmer: pip install nltk "
            "(or pip install 'lightning-zoo[rouge]')"
        ) from err
    return PorterStemmer()


def rouge_tokens(text: str) -> list[str]:
    """The words ROUGE compares: lower-cased ``a-z0-9`` runs, those longer than three letters stemmed."""
    stemmer = _porter_stemmer()
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return [stemmer.stem(w) if len(w) > 3 else w for w in words]


class ROUGEScore(_TorchmetricsROUGE):
    """Mean ROUGE-1/2/L F1 over predictions, gathered across ranks when computed.

    ``update(predictions, references)`` takes a list of strings and, for each, its reference or a list of
    references (then the best F1 of each kind counts, as ``rouge-score``'s ``score_multi``); `compute`
    returns ``{"rouge1", "rouge2", "rougeL"}`` as float32 tensors in 0-1.

    Raises:
        ImportError: ``nltk`` is not installed (one line naming the package).
    """

    def __init__(self) -> None:
        _porter_stemmer()  # a clear message first when nltk is missing
        super().__init__(use_stemmer=True, rouge_keys=ROUGE_KEYS, accumulate="best")

    def update(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        targets = [[r] if isinstance(r, str) else list(r) for r in references]
        super().update(list(predictions), targets)

    def compute(self) -> dict[str, Tensor]:
        """The mean F1 of each kind; 0 before any pair (as a sum over no pairs would be)."""
        if len(self.rouge1_fmeasure) == 0:
            return {key: torch.tensor(0.0, device=self.device) for key in ROUGE_KEYS}
        scores = super().compute()
        return {key: scores[f"{key}_fmeasure"] for key in ROUGE_KEYS}
