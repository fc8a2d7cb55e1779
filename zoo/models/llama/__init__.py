"""Llama family: RMSNorm, SwiGLU, rotary positions, grouped-query attention."""

from zoo.models.llama import convert as convert  # registers from_hf/to_hf
from zoo.models.llama.model import Llama

__all__ = ["Llama"]
