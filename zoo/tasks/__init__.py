"""LightningModules ("systems"): one objective per file."""

from zoo.tasks.adversarial import Adversarial
from zoo.tasks.base import BackboneTask
from zoo.tasks.causal_lm import CausalLM
from zoo.tasks.classification import SequenceClassification
from zoo.tasks.finetune import FinetuneTask
from zoo.tasks.masked_lm import MaskedLM
from zoo.tasks.multiple_choice import MultipleChoice
from zoo.tasks.question_answering import QuestionAnswering
from zoo.tasks.summarization import Summarization
from zoo.tasks.tagging import TokenClassification
from zoo.tasks.translation import Seq2SeqTask, Translation

__all__ = [
    "Adversarial",
    "BackboneTask",
    "CausalLM",
    "FinetuneTask",
    "MaskedLM",
    "MultipleChoice",
    "QuestionAnswering",
    "Seq2SeqTask",
    "SequenceClassification",
    "Summarization",
    "TokenClassification",
    "Translation",
]
