"""GPT-2 family."""

from zoo.models.gpt2 import convert as convert  # registers from_hf/to_hf
from zoo.models.gpt2.model import GPT2, GPT2_SIZES

__all__ = ["GPT2", "GPT2_SIZES"]
