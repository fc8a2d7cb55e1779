"""LightningModules ("systems"): one objective per file."""

from zoo.tasks.base import BackboneTask
from zoo.tasks.causal_lm import CausalLM

__all__ = ["BackboneTask", "CausalLM"]
