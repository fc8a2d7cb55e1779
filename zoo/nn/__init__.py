"""Family-agnostic Transformer building blocks (no Lightning here)."""

from zoo.nn.attention import CrossAttention, KVCache, SelfAttention, build_attention_mask
from zoo.nn.block import PostNormBlock, PreNormBlock
from zoo.nn.embeddings import SinusoidalPositions, TokenEmbedding
from zoo.nn.heads import last_token_index, pool_first, pool_last, pool_mean
from zoo.nn.mlp import MLP

__all__ = [
    "MLP",
    "CrossAttention",
    "KVCache",
    "PostNormBlock",
    "PreNormBlock",
    "SelfAttention",
    "SinusoidalPositions",
    "TokenEmbedding",
    "build_attention_mask",
    "last_token_index",
    "pool_first",
    "pool_last",
    "pool_mean",
]
