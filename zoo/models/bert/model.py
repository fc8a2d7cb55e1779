"""BERT: a bidirectional encoder with post-norm blocks, a [CLS] pooler and MLM + NSP pretraining heads."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from zoo.errors import check_positive, check_probability
from zoo.models.hf_io import HFConvertible
from zoo.models.spec import Configurable
from zoo.nn import MLP, Attention, EncoderStack, PostNormBlock, TokenEmbedding, document_position_ids

BERT_SIZES: dict[str, dict[str, int]] = {
    "bert-tiny": dict(embed_dim=128, num_heads=2, num_layers=2),  # 4.4M
    "bert-mini": dict(embed_dim=256, num_heads=4, num_layers=4),  # 11M
    "bert-small": dict(embed_dim=512, num_heads=8, num_layers=4),  # 29M
    "bert-medium": dict(embed_dim=512, num_heads=8, num_layers=8),  # 41M
    "bert-base": dict(embed_dim=768, num_heads=12, num_layers=12),  # 110M
    "bert-large": dict(embed_dim=1024, num_heads=16, num_layers=24),  # 340M
}
"""Named sizes: ``(embed_dim, num_heads, num_layers)``; ``hidden_dim`` defaults to ``4 * embed_dim``.
``bert-tiny`` .. ``bert-medium`` are Google's compact BERTs (Turc et al., 2019)."""


class BertPretrainingOutput(NamedTuple):
    """What `Bert.forward` returns.

    Attributes:
        mlm_logits: (B, T, vocab_size) masked-language-model logits at every position.
        nsp_logits: (B, 2) next-sentence logits (index 0: "B follows A", 1: "B is random").
    """

    mlm_logits: Tensor
    nsp_logits: Tensor


class Pooler(nn.Module):
    """``tanh(Linear(hidden[:, 0]))``: the [CLS] position summarises the sequence.

    Args:
        embed_dim: Model width C.
    """

    def __init__(self, *, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.activation = nn.Tanh()

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, C) -> (B, C)."""
        return self.activation(self.proj(hidden[:, 0]))


class MaskedLMHead(nn.Module):
    """``Linear -> activation -> LayerNorm -> decoder``; the caller ties ``decoder.weight`` to the token
    embedding, the decoder's bias is the head's own.

    Args:
        embed_dim: Model width C.
        vocab_size: Number of token ids V.
        activation: Non-linearity after the first projection (BERT: ``nn.GELU()``).
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self, *, embed_dim: int, vocab_size: int, activation: nn.Module, layer_norm_eps: float
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.activation = activation
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.decoder = nn.Linear(embed_dim, vocab_size)

    def forward(self, hidden: Tensor) -> Tensor:
        """(..., C) -> (..., V)."""
        return self.decoder(self.norm(self.activation(self.proj(hidden))))


def _block(
    *,
    embed_dim: int,
    num_heads: int,
    hidden_dim: int,
    eps: float,
    dropout: float,
    attention_dropout: float,
    decoder: bool = False,
) -> PostNormBlock:
    """One BERT layer: fused-QKV self-attention and a GELU MLP, each followed by a residual LayerNorm.

    With ``decoder`` (BERT2BERT, `zoo.models.bert.BertEncoderDecoder`) the self-attention is causal and a
    cross-attention sub-layer (queries, fused keys/values of the memory) with its own LayerNorm sits between
    it and the MLP; the parts a BERT layer has keep their names, so its weights load into them.
    """
    heads = dict(num_heads=num_heads, head_dim=embed_dim // num_heads, dropout=attention_dropout)
    attn = Attention(
        qkv_proj=nn.Linear(embed_dim, 3 * embed_dim),  # one matmul; convert.py splits it for Hugging Face
        out_proj=nn.Linear(embed_dim, embed_dim),
        causal=decoder,
        **heads,
    )
    cross_attn = cross_attn_norm = None
    if decoder:
        cross_attn = Attention(
            q_proj=nn.Linear(embed_dim, embed_dim),
            kv_proj=nn.Linear(embed_dim, 2 * embed_dim),
            out_proj=nn.Linear(embed_dim, embed_dim),
            **heads,
        )
        cross_attn_norm = nn.LayerNorm(embed_dim, eps=eps)
    return PostNormBlock(
        self_attn=attn,
        mlp=MLP(embed_dim=embed_dim, hidden_dim=hidden_dim, activation=nn.GELU(), dropout=dropout),
        self_attn_norm=nn.LayerNorm(embed_dim, eps=eps),
        mlp_norm=nn.LayerNorm(embed_dim, eps=eps),
        cross_attn=cross_attn,
        cross_attn_norm=cross_attn_norm,
        dropout=dropout,
    )


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation of every submodule of ``module``: N(0, 0.02) weights, zero biases, LayerNorm
    ones/zeros."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            m.reset_parameters()


class Bert(Configurable, HFConvertible, nn.Module):
    """BERT encoder (Devlin et al., 2019) with optional pretraining heads.

    The methods are the pieces a task needs: `hidden_states`, `pool` for the
    [CLS] summary, `mlm_logits` (on any gathered positions, so an MLM task can skip the
    unmasked ones) and `nsp_logits`. `forward` chains them over every position. The blocks are
    `zoo.nn.PostNormBlock`s of fused-QKV `zoo.nn.Attention` in a `zoo.nn.EncoderStack` (``encoder``);
    ``from_hf``/``to_hf`` convert Hugging Face BERT directories (`zoo.models.bert.convert`).

    Args:
        vocab_size: Number of token ids (30522 for Google's uncased WordPiece vocabulary).
        max_seq_len: Number of learned positions.
        embed_dim: Model width C.
        num_heads: Attention heads per layer.
        num_layers: Number of Transformer blocks.
        hidden_dim: MLP inner width; ``None`` means ``4 * embed_dim``.
        dropout: Dropout on embeddings and residual branches.
        attention_dropout: Dropout on attention probabilities.
        type_vocab_size: Number of segment (token type) ids.
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id: Token id of [PAD]; its embedding starts at zero and gets no gradient.
        with_pretraining_heads: Build the MLM and NSP heads (``False`` for a bare encoder + pooler).

    Raises:
        ValueError: Sizes that are not positive integers, ``embed_dim`` not divisible by ``num_heads``, or
            a dropout outside [0, 1] (the message names the argument).
    """

    fsdp_units: ClassVar[tuple[type[nn.Module], ...]] = (PostNormBlock,)  # see zoo.strategies.FSDP
    accepts_document_ids: ClassVar[bool] = True
    """``hidden_states`` takes ``document_ids`` (`zoo.models.protocols.PackedHiddenStates`)."""
    accepts_output_positions: ClassVar[bool] = True
    """``hidden_states`` takes ``output_positions``: classifiers that read [CLS] get the last layer's [CLS]
    rows only."""
    # checkpoints written before the encoder stack kept the blocks at ``layers.<i>`` (see zoo.checkpoint)
    state_dict_renames: ClassVar[dict[str, str]] = {"layers.": "encoder.layers."}

    def __init__(
        self,
        *,
        vocab_size: int = 30522,
        max_seq_len: int = 512,
        embed_dim: int = 768,
        num_heads: int = 12,
        num_layers: int = 12,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int | None = 0,
        with_pretraining_heads: bool = True,
    ) -> None:
        check_positive("Bert", vocab_size=vocab_size, max_seq_len=max_seq_len, embed_dim=embed_dim)
        check_positive("Bert", num_heads=num_heads, num_layers=num_layers, hidden_dim=hidden_dim)
        check_probability("Bert", dropout=dropout, attention_dropout=attention_dropout)
        if embed_dim % num_heads:
            raise ValueError(f"Bert: embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        super().__init__()
        hidden_dim = hidden_dim or 4 * embed_dim
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.pad_token_id = pad_token_id
        self.type_vocab_size = type_vocab_size
        self.embeddings = TokenEmbedding(
            vocab_size=vocab_size,
            embed_dim=embed_dim,
            max_seq_len=max_seq_len,
            num_segments=type_vocab_size,
            norm=nn.LayerNorm(embed_dim, eps=layer_norm_eps),
            dropout=dropout,
            padding_idx=pad_token_id,
        )
        sizes = dict(embed_dim=embed_dim, num_heads=num_heads, hidden_dim=hidden_dim, eps=layer_norm_eps)
        dropouts = dict(dropout=dropout, attention_dropout=attention_dropout)
        layers = [_block(**sizes, **dropouts) for _ in range(num_layers)]
        self.encoder = EncoderStack(layers=layers, norm=None)  # post-norm blocks end normalised
        self.pooler = Pooler(embed_dim=embed_dim)
        self.mlm_head: MaskedLMHead | None = None
        self.nsp_head: nn.Linear | None = None
        if with_pretraining_heads:
            self.mlm_head = MaskedLMHead(
                embed_dim=embed_dim,
                vocab_size=vocab_size,
                activation=nn.GELU(),
                layer_norm_eps=layer_norm_eps,
            )
            self.mlm_head.decoder.weight = self.embeddings.tokens.weight
            self.nsp_head = nn.Linear(embed_dim, 2)
        self.reset_parameters()

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Bert:
        """Build a named size (see ``BERT_SIZES``), e.g. ``Bert.from_name("bert-mini", vocab_size=8192)``."""
        if name not in BERT_SIZES:
            raise ValueError(f"unknown BERT size {name!r}; choose one of {sorted(BERT_SIZES)}")
        return cls(**{**BERT_SIZES[name], **overrides})

    @property
    def layers(self) -> nn.ModuleList:
        """The blocks, in order (``encoder.layers``; layer-wise learning rates count them)."""
        return self.encoder.layers

    @property
    def token_embedding(self) -> nn.Embedding:
        """The token table (``embeddings.tokens``), whose output adversarial training perturbs
        (`zoo.models.protocols.TokenEmbedder`)."""
        return self.embeddings.tokens

    def reset_parameters(self) -> None:
        """BERT initialisation: N(0, 0.02) weights, zero biases, LayerNorm ones/zeros, zero [PAD] row."""
        init_bert_weights(self)
        if self.pad_token_id is not None:  # after the loop: the tied MLM decoder re-draws the same table
            with torch.no_grad():
                self.embeddings.tokens.weight[self.pad_token_id].zero_()

    def forward(
        self, input_ids: Tensor, *, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> BertPretrainingOutput:
        """MLM logits at every position and NSP logits, for inference and parity checks.

        Training an MLM should call `hidden_states` and run `mlm_logits` on the masked positions only.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T), 1 at real tokens and 0 at padding.
            token_type_ids: (B, T) segment ids (0 for sentence A, 1 for sentence B); default zeros.

        Returns:
            ``(mlm_logits (B, T, V), nsp_logits (B, 2))``.
        """
        hidden = self.hidden_states(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return BertPretrainingOutput(self.mlm_logits(hidden), self.nsp_logits(self.pool(hidden)))

    def hidden_states(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_positions: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Last-layer hidden states (B, T, C); same arguments as `forward`.

        Padding positions hold values that mean nothing; mask them out downstream. With
        ``output_positions`` (B, N), the last layer computes only those rows and (B, N, C) is returned:
        pretraining reads [CLS] and the ~15% masked positions, so most of that layer's work is saved.

        ``document_ids`` (B, T) packs several sequences into each row (one run of equal ids per sequence;
        padding is a run of its own): attention stays within each sequence and positions restart at each
        one, so every sequence gets the hidden states it gets alone
        (`zoo.models.protocols.PackedHiddenStates`).
        """
        position_ids = document_position_ids(document_ids) if document_ids is not None else None
        x = self.embeddings(input_ids, token_type_ids=token_type_ids, position_ids=position_ids)  # (B, T, C)
        return self.encoder(
            x, padding_mask=attention_mask, output_positions=output_positions, document_ids=document_ids
        )

    def pool(self, hidden: Tensor) -> Tensor:
        """Pooled [CLS] summary (B, C) of hidden states (B, T, C), the input of NSP and classifiers."""
        return self.pooler(hidden)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits (..., V) for hidden states (..., C), e.g. (N, C) gathered at masked positions."""
        if self.mlm_head is None:
            raise RuntimeError("this Bert was built with with_pretraining_heads=False; it has no MLM head")
        return self.mlm_head(hidden)

    def nsp_logits(self, pooled: Tensor) -> Tensor:
        """Next-sentence logits (B, 2) for pooled outputs (B, C)."""
        if self.nsp_head is None:
            raise RuntimeError("this Bert was built with with_pretraining_heads=False; it has no NSP head")
        return self.nsp_head(pooled)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward and backward) per token of sequences of ``seq_len`` (default
        ``max_seq_len``): nanoGPT's ``6N + 12·L·H·Q·T``, N the weights of the matrix products, the MLM
        head's at every position (as `forward` computes it; the pooler and NSP head, once per sequence,
        are counted per token too, under 1% of N at bert-base)."""
        attn = self.layers[0].self_attn
        N = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * N + 12 * self.num_layers * attn.num_heads * attn.head_dim * (seq_len or self.max_seq_len)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights counted once); optionally without the embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for p in self.embeddings.parameters() if p.dim() == 2)
        return n
