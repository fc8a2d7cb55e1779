"""Everything before a batch reaches the model: tokenizers, datasets, collators, DataModules."""

from zoo.data.chat_data import ChatDataModule
from zoo.data.classification import TextClassificationDataModule
from zoo.data.multiple_choice import MultipleChoiceDataModule
from zoo.data.parallel import ParallelTextDataModule
from zoo.data.pretraining import BertPretrainingDataModule
from zoo.data.squad import QuestionAnsweringDataModule
from zoo.data.summarization import SummarizationDataModule
from zoo.data.tagging import TaggingDataModule
from zoo.data.text import TextDataModule, TokenBlocks
from zoo.data.token_budget import TokenBudgetSampler

__all__ = [
    "BertPretrainingDataModule",
    "ChatDataModule",
    "MultipleChoiceDataModule",
    "ParallelTextDataModule",
    "QuestionAnsweringDataModule",
    "SummarizationDataModule",
    "TaggingDataModule",
    "TextClassificationDataModule",
    "TextDataModule",
    "TokenBlocks",
    "TokenBudgetSampler",
]
