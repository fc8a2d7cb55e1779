"""Family-agnostic Transformer building blocks (no Lightning here)."""

from zoo.nn.attention import Attention, KVCache, build_attention_mask, document_position_ids
from zoo.nn.block import PostNormBlock, PreNormBlock
from zoo.nn.embeddings import SinusoidalPositions, TokenEmbedding
from zoo.nn.heads import last_token_index, pool_first, pool_last, pool_mean, pool_packed, sequence_starts
from zoo.nn.layout import set_linear_layout
from zoo.nn.lora import LoRA, LoRALinear, apply_lora, merge_lora
from zoo.nn.mlp import MLP, GatedMLP
from zoo.nn.norms import RMSNorm
from zoo.nn.positions import ALiBiPositions, LearnedPositions, Positions, RotaryPositions
from zoo.nn.stack import DecoderCache, DecoderLM, DecoderStack, EncoderDecoderLM, EncoderStack

__all__ = [
    "MLP",
    "ALiBiPositions",
    "Attention",
    "DecoderCache",
    "DecoderLM",
    "DecoderStack",
    "EncoderDecoderLM",
    "EncoderStack",
    "GatedMLP",
    "KVCache",
    "LearnedPositions",
    "LoRA",
    "LoRALinear",
    "Positions",
    "PostNormBlock",
    "PreNormBlock",
    "RMSNorm",
    "RotaryPositions",
    "SinusoidalPositions",
    "TokenEmbedding",
    "apply_lora",
    "build_attention_mask",
    "document_position_ids",
    "last_token_index",
    "merge_lora",
    "pool_first",
    "pool_last",
    "pool_mean",
    "pool_packed",
    "sequence_starts",
    "set_linear_layout",
]
