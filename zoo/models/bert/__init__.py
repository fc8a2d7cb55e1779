"""BERT family."""

from zoo.models.bert import convert as convert  # registers from_hf/to_hf
from zoo.models.bert.encoder_decoder import BertEncoderDecoder
from zoo.models.bert.model import BERT_SIZES, Bert, BertPretrainingOutput, MaskedLMHead, Pooler

__all__ = ["BERT_SIZES", "Bert", "BertEncoderDecoder", "BertPretrainingOutput", "MaskedLMHead", "Pooler"]
