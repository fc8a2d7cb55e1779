"""Encoder-decoder Transformer family (translation)."""

from zoo.models.seq2seq.model import TRANSFORMER_SIZES, Transformer

__all__ = ["TRANSFORMER_SIZES", "Transformer"]
