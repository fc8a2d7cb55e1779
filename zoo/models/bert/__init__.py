"""BERT family."""

from zoo.models.bert.model import BERT_SIZES, Bert, BertPretrainingOutput, MaskedLMHead, Pooler

__all__ = ["BERT_SIZES", "Bert", "BertPretrainingOutput", "MaskedLMHead", "Pooler"]
