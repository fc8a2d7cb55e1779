"""BERT2BERT (Rothe et al., 2020, "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks"): an
encoder-decoder whose two sides are BERT, so a pretrained encoder checkpoint serves generation.

The encoder is a `zoo.models.bert.Bert`. The decoder is BERT's blocks (`zoo.nn.PostNormBlock`) in a
`zoo.nn.DecoderStack`, with causal self-attention and a cross-attention sub-layer each, over BERT's
embeddings (learned positions, segment 0, LayerNorm) that share the encoder's word table; the output
projection is that table, transposed. `BertEncoderDecoder.warm_start` copies a BERT into every part both
have: the whole encoder, the decoder's embeddings and, layer by layer, its self-attention, MLP and norms.
Cross-attention, which a BERT lacks, keeps its fresh initialisation as in the paper, or with
``cross_attention_init="self_attention"`` starts as a copy of its layer's self-attention (queries from the
self-attention's queries, keys and values of the memory from its keys and values, the output projection
and LayerNorm from its own), so that from the first step it attends to the source as the pretrained layer
attends to its own context. ``BertEncoderDecoder.from_hf`` (and a task's ``pretrained:``) reads a Hugging
Face BERT directory that way; ``to_hf`` writes transformers' ``EncoderDecoderModel`` (``convert.py``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from zoo.models.bert.model import Bert, _block, init_bert_weights
from zoo.models.hf_io import HFConvertible
from zoo.models.spec import Configurable
from zoo.nn import DecoderStack, EncoderDecoderLM, PostNormBlock, TokenEmbedding

_NEW_IN_DECODER = ("cross_attn.", "cross_attn_norm.")  # the parts of a decoder block a BERT layer lacks
CROSS_ATTENTION_INITS = ("random", "self_attention")


class BertEncoderDecoder(Configurable, HFConvertible, EncoderDecoderLM):
    """A BERT encoder and a BERT-shaped causal decoder with cross-attention (an
    `zoo.models.protocols.EncoderDecoder`, for `zoo.tasks.translation.Translation` and
    `zoo.tasks.summarization.Summarization`). Forward, encode, decode, caches and FLOPs come from
    `zoo.nn.EncoderDecoderLM`.

    The arguments are `Bert`'s (the architecture of the weights to warm-start from); the decoder has as
    many layers as the encoder. Source ids are read as BERT reads them (``[CLS] ... [SEP]``); the decoder
    starts from a start token (BERT2BERT uses ``[CLS]``) and ends with an end token (``[SEP]``).

    Args:
        vocab_size: Number of token ids (the CLI links it from the data's tokenizer).
        max_seq_len: Learned positions of the encoder and of the decoder.
        embed_dim: Model width C.
        num_heads: Attention heads per layer.
        num_layers: Blocks of the encoder, and of the decoder.
        hidden_dim: MLP inner width; ``None`` means ``4 * embed_dim``.
        dropout: Dropout on embeddings and residual branches.
        attention_dropout: Dropout on attention probabilities.
        type_vocab_size: Segment ids of the embeddings (both sides use segment 0).
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id: Token id of [PAD]; its embedding starts at zero and gets no gradient.
        cross_attention_init: What `warm_start` puts in each decoder layer's cross-attention: ``"random"``
            (BERT's initialisation, as Rothe et al.) or ``"self_attention"`` (a copy of that layer's
            pretrained self-attention and its LayerNorm). Not part of the architecture: it only says how
            pretrained weights are read.

    Raises:
        ValueError: As `Bert` (sizes, dropouts), naming the argument; an unknown ``cross_attention_init``.
    """

    fsdp_units: ClassVar[tuple[type[nn.Module], ...]] = (PostNormBlock,)  # see zoo.strategies.FSDP
    embedding_names: ClassVar[tuple[None, str]] = (None, "decoder_embeddings")  # Bert embeds the source

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
        cross_attention_init: Literal["random", "self_attention"] = "random",
    ) -> None:
        if cross_attention_init not in CROSS_ATTENTION_INITS:
            raise ValueError(
                f"cross_attention_init must be one of {', '.join(CROSS_ATTENTION_INITS)}, "
                f"got {cross_attention_init!r}"
            )
        encoder = Bert(  # checks every size and dropout
            vocab_size=vocab_size,
            max_seq_len=max_seq_len,
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            hidden_dim=hidden_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            type_vocab_size=type_vocab_size,
            layer_norm_eps=layer_norm_eps,
            pad_token_id=pad_token_id,
            with_pretraining_heads=False,
        )
        decoder_embeddings = TokenEmbedding(
            vocab_size=vocab_size,
            embed_dim=embed_dim,
            max_seq_len=max_seq_len,
            num_segments=type_vocab_size,
            norm=nn.LayerNorm(embed_dim, eps=layer_norm_eps),
            dropout=dropout,
            padding_idx=pad_token_id,
        )
        decoder_embeddings.tokens = encoder.embeddings.tokens  # one word table for both sides
        sizes = dict(embed_dim=embed_dim, num_heads=num_heads, hidden_dim=hidden_dim or 4 * embed_dim)
        block = dict(eps=layer_norm_eps, dropout=dropout, attention_dropout=attention_dropout, decoder=True)
        decoder = DecoderStack(layers=[_block(**sizes, **block) for _ in range(num_layers)], norm=None)
        lm_head = nn.Linear(embed_dim, vocab_size, bias=False)
        lm_head.weight = encoder.embeddings.tokens.weight
        super().__init__(
            encoder=encoder,
            target_embedding=decoder_embeddings,
            decoder=decoder,
            lm_head=lm_head,
            max_seq_len=max_seq_len,
        )
        self.cross_attention_init = cross_attention_init

    def reset_parameters(self) -> None:
        """BERT's initialisation (`Bert.reset_parameters`) of the encoder, then of the decoder's own parts."""
        init_bert_weights(self.decoder_embeddings)
        init_bert_weights(self.decoder)
        self.encoder.reset_parameters()  # last: it draws the shared word table again and zeroes its [PAD] row

    @torch.no_grad()
    def warm_start(self, bert: Bert) -> None:
        """Copy ``bert``'s weights into every part of this model that a BERT has (Rothe et al., 2020): the
        encoder, the decoder's embeddings, and the self-attention, MLP and norms of each decoder layer.
        Cross-attention is left as it is (freshly initialised), or with ``cross_attention_init=
        "self_attention"`` becomes a copy of its layer's self-attention and LayerNorm; pretraining heads of
        ``bert`` are unused.

        Raises:
            ValueError: ``bert`` has another architecture (the message names the differing shapes).
        """
        ours, theirs = len(self.decoder.layers), len(bert.layers)
        if ours != theirs:
            raise ValueError(f"a BERT of {theirs} layers cannot warm-start {ours} decoder layers")
        encoder = {k: v for k, v in bert.state_dict().items() if not k.startswith(("mlm_head.", "nsp_head."))}
        try:
            self.encoder.load_state_dict(encoder)
            self.decoder_embeddings.load_state_dict(bert.embeddings.state_dict())
            for ours, theirs in zip(self.decoder.layers, bert.layers):
                result = ours.load_state_dict(theirs.state_dict(), strict=False)
                new = [k for k in result.missing_keys if not k.startswith(_NEW_IN_DECODER)]
                if result.unexpected_keys or new:
                    raise RuntimeError(f"missing {new}, unexpected {result.unexpected_keys}")
        except RuntimeError as err:
            raise ValueError(f"the BERT does not fit this BertEncoderDecoder: {str(err)[:500]}") from err
        if self.cross_attention_init == "self_attention":
            for layer in self.decoder.layers:
                _copy_self_attention(layer)


@torch.no_grad()
def _copy_self_attention(layer: nn.Module) -> None:
    """Set ``layer``'s cross-attention to its self-attention: the fused QKV projection's query rows become
    the query projection, its key and value rows the memory's fused KV projection."""
    self_attn, cross = layer.self_attn, layer.cross_attn
    C = cross.q_proj.out_features
    cross.q_proj.weight.copy_(self_attn.qkv_proj.weight[:C])
    cross.q_proj.bias.copy_(self_attn.qkv_proj.bias[:C])
    cross.kv_proj.weight.copy_(self_attn.qkv_proj.weight[C:])
    cross.kv_proj.bias.copy_(self_attn.qkv_proj.bias[C:])
    cross.out_proj.load_state_dict(self_attn.out_proj.state_dict())
    layer.cross_attn_norm.load_state_dict(layer.self_attn_norm.state_dict())


def load_hf(cls: type[BertEncoderDecoder], name_or_path: str, **overrides: object) -> BertEncoderDecoder:
    """A BERT2BERT warm-started from a Hugging Face BERT (a directory, ``python:<package>`` or a Hub name,
    see `Bert.from_hf`); ``overrides`` are further constructor arguments (dropouts)."""
    bert = Bert.from_hf(name_or_path, with_pretraining_heads=False)
    args = {k: v for k, v in bert.spec["init_args"].items() if k != "with_pretraining_heads"}
    model = cls(**{**args, **overrides})
    model.warm_start(bert)
    return model
