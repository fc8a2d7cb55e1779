"""Llama family: RMSNorm, SwiGLU, rotary positions, grouped-query attention."""

from zoo.models.llama.model import Llama

__all__ = ["Llama"]
