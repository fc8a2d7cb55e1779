"""Everything before a batch reaches the model: tokenizers, datasets, collators, DataModules."""

from zoo.data.classification import TextClassificationDataModule
from zoo.data.pretraining import BertPretrainingDataModule
from zoo.data.tagging import TaggingDataModule
from zoo.data.text import TextDataModule, TokenBlocks

__all__ = [
    "BertPretrainingDataModule",
    "TaggingDataModule",
    "TextClassificationDataModule",
    "TextDataModule",
    "TokenBlocks",
]
