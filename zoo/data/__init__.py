"""Everything before a batch reaches the model: tokenizers, datasets, collators, DataModules."""

from zoo.data.pretraining import BertPretrainingDataModule
from zoo.data.text import TextDataModule, TokenBlocks

__all__ = ["BertPretrainingDataModule", "TextDataModule", "TokenBlocks"]
