"""ROUGE-1, ROUGE-2 and ROUGE-L F1 (Lin, 2004), computed as Google's ``rouge-score`` package computes them
with ``use_stemmer=True``, without its dependencies (nltk, absl, six).

Text is lower-cased, every run of characters other than ``a-z0-9`` becomes a space, and tokens longer than
three characters are Porter-stemmed (`porter_stem`: nltk's ``PorterStemmer`` in its default
``NLTK_EXTENSIONS`` mode, which ``rouge-score`` uses). ROUGE-N is the F1 of clipped n-gram overlap, ROUGE-L
the F1 of the longest common subsequence; a corpus score is the mean of the per-pair F1s.
``tests/tasks/test_rouge.py`` checks equality with ``rouge_score.rouge_scorer.RougeScorer`` on real pairs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")

# -- Porter stemmer ---------------------------------------------------------------------------------
# A port of nltk.stem.porter.PorterStemmer (Apache-2.0), NLTK_EXTENSIONS mode only.
_IRREGULAR = {
    "skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
    "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
    "cannings": "canning", "canning": "canning", "howe": "howe", "proceed": "proceed",
    "exceed": "exceed", "succeed": "succeed",
}  # fmt: skip
_VOWELS = frozenset("aeiou")
_Rule = tuple[str, str, Callable[[str], bool] | None]


def _consonants(word: str) -> list[bool]:
    flags: list[bool] = []
    for i, ch in enumerate(word):  # "y" is a consonant at the start and after a vowel
        flags.append(ch not in _VOWELS and (ch != "y" or i == 0 or not flags[i - 1]))
    return flags


def _measure(stem: str) -> int:
    """m in [C](VC)^m[V]: the number of vowel-consonant sequences."""
    return "".join("c" if c else "v" for c in _consonants(stem)).count("vc")


def _positive(stem: str) -> bool:
    return _measure(stem) > 0


def _above_one(stem: str) -> bool:
    return _measure(stem) > 1


def _double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _consonants(word)[-1]


def _cvc(word: str) -> bool:
    c = _consonants(word)
    if len(word) == 2:  # NLTK's extension: a vowel then a consonant
        return not c[0] and c[1]
    return len(word) >= 3 and c[-3] and not c[-2] and c[-1] and word[-1] not in "wxy"


def _apply(word: str, rules: Sequence[_Rule]) -> str:
    """The first rule whose suffix ``word`` has decides: replaced if its condition holds on the stem."""
    for suffix, replacement, condition in rules:
        if suffix == "*d":  # a double consonant
            if _double_consonant(word):
                stem = word[:-2]
                return stem + replacement if condition is None or condition(stem) else word
            continue
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + replacement if condition is None or condition(stem) else word
    return word


def _step1(word: str) -> str:
    if word.endswith("ies") and len(word) == 4:
        word = word[:-3] + "ie"
    else:
        word = _apply(word, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])
    if word.endswith("ied"):
        word = word[:-3] + ("ie" if len(word) == 4 else "i")
    elif word.endswith("eed"):
        word = word[:-1] if _measure(word[:-3]) > 0 else word
    else:
        for suffix in ("ed", "ing"):
            stem = word[: -len(suffix)]
            if word.endswith(suffix) and not all(_consonants(stem)):
                last = stem[-1]
                word = _apply(stem, [
                    ("at", "ate", None), ("bl", "ble", None), ("iz", "ize", None),
                    ("*d", last, lambda _, c=last: c not in "lsz"),
                    ("", "e", lambda s: _measure(s) == 1 and _cvc(s)),
                ])  # fmt: skip
                break
    return _apply(word, [("y", "i", lambda s: len(s) > 1 and _consonants(s)[-1])])


_STEP2: list[_Rule] = [
    (suffix, replacement, _positive)
    for suffix, replacement in [
        ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
        ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
        ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
        ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
        ("fulli", "ful"),
    ]
]  # fmt: skip
_STEP3: list[_Rule] = [
    (s, r, _positive)
    for s, r in [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
                 ("ful", ""), ("ness", "")]
]  # fmt: skip
_STEP4: list[_Rule] = [
    (s, "", (lambda stem: _above_one(stem) and stem[-1] in "st") if s == "ion" else _above_one)
    for s in ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou",
              "ism", "ate", "iti", "ous", "ive", "ize"]
]  # fmt: skip


def _step2(word: str) -> str:
    if word.endswith("alli") and _positive(word[:-4]):
        return _step2(word[:-4] + "al")
    return _apply(word, [*_STEP2, ("logi", "log", lambda _: _positive(word[:-3]))])


def _step5(word: str) -> str:
    if word.endswith("e"):
        stem, m = word[:-1], _measure(word[:-1])
        if m > 1 or (m == 1 and not _cvc(stem)):
            word = stem
    return _apply(word, [("ll", "l", lambda _: _measure(word[:-1]) > 1)])


def porter_stem(word: str) -> str:
    """The Porter stem of a lower-case ``word``, as nltk's ``PorterStemmer().stem`` gives it."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 2:
        return word
    return _step5(_apply(_apply(_step2(_step1(word)), _STEP3), _STEP4))


# -- ROUGE ------------------------------------------------------------------------------------------
_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str, *, stem: bool = True) -> list[str]:
    """``rouge-score``'s tokens of ``text``: lower-cased ``a-z0-9`` runs, those over three characters
    stemmed (``stem``)."""
    tokens = _NON_ALPHANUMERIC.sub(" ", text.lower()).split()
    return [porter_stem(t) if stem and len(t) > 3 else t for t in tokens]


def _f1(overlap: int, predicted: int, reference: int) -> float:
    precision, recall = overlap / max(predicted, 1), overlap / max(reference, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n(prediction: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F1 of two token lists: clipped n-gram overlap."""
    grams = lambda tokens: Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    pred, ref = grams(prediction), grams(reference)
    return _f1(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 of two token lists: the longest common subsequence."""
    if not prediction or not reference:
        return 0.0
    previous = [0] * (len(prediction) + 1)
    for ref_token in reference:  # one row of the LCS table at a time
        row = [0]
        for j, token in enumerate(prediction):
            row.append(previous[j] + 1 if token == ref_token else max(previous[j + 1], row[j]))
        previous = row
    return _f1(previous[-1], len(prediction), len(reference))


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """``{"rouge1", "rouge2", "rougeL"}`` F1 (0-1) of one prediction against one reference."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return {"rouge1": rouge_n(pred, ref, 1), "rouge2": rouge_n(pred, ref, 2), "rougeL": rouge_l(pred, ref)}


class ROUGEScore(Metric):
    """Mean ROUGE-1/2/L F1 over predictions, summed across ranks when computed.

    ``update(predictions, references)`` takes a list of strings and, for each, its reference or a list of
    references (then the best F1 of each kind counts, as ``rouge-score``'s ``score_multi``); `compute`
    returns ``{"rouge1", "rouge2", "rougeL"}`` as tensors in 0-1 (``rouge-score``'s mean F1 with
    ``use_stemmer=True``).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for key in ROUGE_KEYS:
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        for prediction, refs in zip(predictions, references):
            scores = [rouge_scores(prediction, r) for r in ([refs] if isinstance(refs, str) else refs)]
            for key in ROUGE_KEYS:
                setattr(self, key, getattr(self, key) + max(s[key] for s in scores))
        self.pairs += len(predictions)

    def compute(self) -> dict[str, Tensor]:
        return {key: getattr(self, key) / self.pairs.clamp(min=1) for key in ROUGE_KEYS}
