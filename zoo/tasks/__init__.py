"""LightningModules ("systems"): one objective per file."""

from zoo.tasks.base import BackboneTask
from zoo.tasks.causal_lm import CausalLM
from zoo.tasks.masked_lm import MaskedLM

__all__ = ["BackboneTask", "CausalLM", "MaskedLM"]
