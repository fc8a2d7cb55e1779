"""LightningModules ("systems"): one objective per file."""

from zoo.tasks.base import BackboneTask
from zoo.tasks.causal_lm import CausalLM
from zoo.tasks.classification import SequenceClassification
from zoo.tasks.finetune import FinetuneTask
from zoo.tasks.masked_lm import MaskedLM
from zoo.tasks.tagging import TokenClassification
from zoo.tasks.translation import Translation

__all__ = [
    "BackboneTask",
    "CausalLM",
    "FinetuneTask",
    "MaskedLM",
    "SequenceClassification",
    "TokenClassification",
    "Translation",
]
