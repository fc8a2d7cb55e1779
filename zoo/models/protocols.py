"""The backbone contract: what each task calls on the network it is given.

A task never asks a backbone for its class, only for members. These `typing.Protocol`s name those
members in one vocabulary, one protocol per way of being used; any ``nn.Module`` that has them plugs in,
zoo's own families included. A task declares its protocol in the class attribute ``backbone_protocol``
and `check_backbone` verifies it once, when the task is built, so a backbone that cannot serve fails with
one message naming every missing member instead of an ``AttributeError`` in the middle of a run.

One vocabulary for every family: ``hidden_states`` is a network's last-layer states (B, T, C),
``attention_mask`` its input's padding mask (1 at real tokens) and ``memory_mask`` the source's inside a
decoder, ``init_cache`` makes the key/value cache that ``cache=`` passes back (with ``reorder`` for beam
search), ``tie_weights`` shares the output layer with the token table and ``pad_token_id`` names padding.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = [
    "CausalDecoder",
    "Encoder",
    "EncoderDecoder",
    "HiddenStates",
    "IncrementalDecoder",
    "MaskedLMEncoder",
    "PackedDecoder",
    "PackedHiddenStates",
    "TokenEmbedder",
    "check_backbone",
    "missing_members",
    "protocol_members",
]


@runtime_checkable
class CausalDecoder(Protocol):
    """A network mapping token ids to next-token logits: all `zoo.tasks.CausalLM` needs.

    ``forward(input_ids (B, T), attention_mask=(B, T) | None) -> logits (B, T, V)``. Optional, read when
    present: ``max_seq_len`` and ``vocab_size`` (checked against the data in ``setup``; ``max_seq_len`` also
    sizes generation's window) and ``flops_per_token`` (MFU).

    Implemented by: `zoo.models.gpt2.GPT2`, `zoo.models.llama.Llama` (any `zoo.nn.DecoderLM`), and any
    plain module with such a ``forward`` (e.g. a GRU language model).
    """

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor: ...


@runtime_checkable
class IncrementalDecoder(CausalDecoder, Protocol):
    """A `CausalDecoder` that decodes one token at a time from a KV cache and exposes its hidden states.

    Its ``forward`` also takes ``position_ids`` (B, T) (left-padded prompts) and ``cache`` (from
    ``init_cache``). `zoo.tasks.decoding.generate` decodes incrementally with it (otherwise it re-reads a
    sliding window every step); fine-tuning tasks read ``hidden_states`` (B, T, C) from it. Optional:
    a ``forward`` parameter ``last_only`` (logits (B, 1, V) of the last position only), which decoding
    passes after the prompts when present.

    Implemented by: `zoo.models.gpt2.GPT2`, `zoo.models.llama.Llama` (any `zoo.nn.DecoderLM`).
    """

    max_seq_len: int
    vocab_size: int

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cache: Any = None,
    ) -> Tensor: ...

    def hidden_states(self, input_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor: ...

    def init_cache(self, batch_size: int, max_seq_len: int | None = None) -> Any: ...


@runtime_checkable
class PackedDecoder(CausalDecoder, Protocol):
    """A `CausalDecoder` that keeps the documents of a packed row apart.

    Its ``forward`` also takes ``document_ids`` (B, T), the document of each position (one run of equal
    ids per document): no position attends across a document boundary and positions restart at each
    document, so every document gets the logits it would get alone. It declares this with
    ``accepts_document_ids = True``. `zoo.tasks.CausalLM` passes a batch's ``document_ids`` (data with
    ``pack_documents``) only to such a backbone and refuses the batch for any other.

    Implemented by: `zoo.models.gpt2.GPT2`, `zoo.models.llama.Llama` (any `zoo.nn.DecoderLM`).
    """

    accepts_document_ids: bool

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, document_ids: Tensor | None = None
    ) -> Tensor: ...


@runtime_checkable
class HiddenStates(Protocol):
    """A network that gives one vector per input token: what the fine-tuning tasks need
    (`zoo.tasks.SequenceClassification`, `zoo.tasks.TokenClassification`).

    ``hidden_states(input_ids (B, T), *, attention_mask) -> (B, T, C)`` and ``embed_dim`` (C). An `Encoder`
    is also given the batch's ``token_type_ids``. Layer-wise learning-rate decay also needs ``layers`` (the
    blocks, in order) and ``freeze_embeddings`` needs ``embeddings`` (the input embedding modules); they
    are checked when those options are set.

    Implemented by: `zoo.models.bert.Bert`, `zoo.models.gpt2.GPT2`, `zoo.models.llama.Llama`.
    """

    embed_dim: int

    def hidden_states(self, input_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor: ...


@runtime_checkable
class PackedHiddenStates(HiddenStates, Protocol):
    """`HiddenStates` for packed rows: ``hidden_states`` also takes ``document_ids`` (B, T), the sequence
    of each position (one run of equal ids per sequence). No position attends outside its sequence and
    positions restart at each one, so every sequence gets the hidden states it gets alone. It declares
    this with ``accepts_document_ids = True``. The fine-tuning tasks pass a packed batch's
    ``document_ids`` (data with ``batching: packed``) only to such a backbone and refuse it for any other.

    Implemented by: `zoo.models.bert.Bert`, `zoo.models.gpt2.GPT2`, `zoo.models.llama.Llama`.
    """

    accepts_document_ids: bool

    def hidden_states(
        self, input_ids: Tensor, *, attention_mask: Tensor | None = None, document_ids: Tensor | None = None
    ) -> Tensor: ...


@runtime_checkable
class TokenEmbedder(Protocol):
    """A network whose input ids pass through one token-embedding module, ``token_embedding``: ids (B, T)
    -> vectors (B, T, C), before positions, segments or norms are added. The fine-tuning tasks'
    ``adversarial`` option perturbs its output (`zoo.tasks.adversarial`); it is checked when that option
    is set.

    Implemented by: `zoo.models.bert.Bert`, `zoo.models.gpt2.GPT2`, `zoo.models.llama.Llama` (any
    `zoo.nn.DecoderLM`).
    """

    token_embedding: Any


@runtime_checkable
class Encoder(HiddenStates, Protocol):
    """A bidirectional encoder with segment (token type) ids:
    ``hidden_states(input_ids, *, attention_mask, token_type_ids) -> (B, T, C)``.

    ``type_vocab_size`` is the number of segment ids, ``layers`` the sequence of blocks and
    ``embeddings`` the input embedding module.

    Implemented by: `zoo.models.bert.Bert`.
    """

    type_vocab_size: int
    layers: Any
    embeddings: Any

    def hidden_states(
        self, input_ids: Tensor, *, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor: ...


@runtime_checkable
class MaskedLMEncoder(Encoder, Protocol):
    """An `Encoder` with BERT's pretraining heads: what `zoo.tasks.MaskedLM` needs.

    ``mlm_logits(hidden (N, C)) -> (N, V)``, ``pool(hidden (B, T, C)) -> (B, C)`` and
    ``nsp_logits(pooled (B, C)) -> (B, 2)``.

    Implemented by: `zoo.models.bert.Bert`.
    """

    def mlm_logits(self, hidden: Tensor) -> Tensor: ...

    def nsp_logits(self, pooled: Tensor) -> Tensor: ...

    def pool(self, hidden: Tensor) -> Tensor: ...


@runtime_checkable
class EncoderDecoder(Protocol):
    """A sequence-to-sequence network: what `zoo.tasks.Translation` and its beam search need.

    ``forward(src_ids (B, S), tgt_ids (B, T), *, attention_mask) -> (B, T, V)`` teacher-forced;
    ``encode(src_ids, *, attention_mask) -> memory (B, S, C)``;
    ``decode(tgt_ids, memory, *, memory_mask, cache) -> (B, T, V)``;
    ``init_cache(batch_size, *, target_len, source_len)`` for incremental decoding (its ``reorder(index)``
    serves beam search); ``max_seq_len`` caps the length of a translation.

    Implemented by: `zoo.models.seq2seq.Transformer`.
    """

    max_seq_len: int

    def forward(
        self, src_ids: Tensor, tgt_ids: Tensor, *, attention_mask: Tensor | None = None
    ) -> Tensor: ...

    def encode(self, src_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor: ...

    def decode(
        self, tgt_ids: Tensor, memory: Tensor, *, memory_mask: Tensor | None = None, cache: Any = None
    ) -> Tensor: ...

    def init_cache(self, batch_size: int, *, target_len: int, source_len: int) -> Any: ...


def forward_takes(backbone: Any, argument: str) -> bool:
    """Whether ``backbone.forward`` has a parameter named ``argument`` (an optional one a task or decoding
    passes only where it is understood: ``position_ids``, ``last_only``, ``logits_at``)."""
    try:
        return argument in inspect.signature(backbone.forward).parameters
    except (TypeError, ValueError, AttributeError):  # a forward without a signature: pass nothing extra
        return False


def protocol_members(protocol: type) -> dict[str, str]:
    """Every member ``protocol`` requires, own and inherited, in declaration order, each with how it
    reads in a message: ``"mlm_logits(hidden)"`` for a method, ``"embed_dim"`` for an attribute."""
    members: dict[str, str] = {}
    for cls in reversed(protocol.__mro__):
        if not getattr(cls, "_is_protocol", False) or cls.__module__ == "typing":
            continue
        for name in cls.__dict__.get("__annotations__", {}):
            members.setdefault(name, name)
        for name, value in cls.__dict__.items():
            if callable(value) and not name.startswith("_"):
                params = list(inspect.signature(value).parameters.values())[1:]  # without self
                listed = ", ".join(p.name for p in params if p.default is inspect.Parameter.empty)
                members.setdefault(name, f"{name}({listed})")
    return members


def missing_members(backbone: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``backbone`` lacks, as `protocol_members` shows them; a method
    set to ``None`` is missing (as ``isinstance`` sees it)."""
    return [
        shown
        for name, shown in protocol_members(protocol).items()
        if not hasattr(backbone, name) or (shown.endswith(")") and getattr(backbone, name) is None)
    ]


def check_backbone(backbone: Any, protocol: type, *, task: str) -> None:
    """Raise `TypeError` unless ``backbone`` has every member of ``protocol``.

    Args:
        backbone: The network a task was given.
        protocol: One of this module's protocols (or a user's own ``runtime_checkable`` one).
        task: The task's name, for the message.

    Raises:
        TypeError: Naming the task, the protocol, every member it needs and the ones the backbone lacks,
            e.g. ``MaskedLM needs a backbone with encode(input_ids), ... (zoo.models.protocols.
            MaskedLMEncoder); GRULM lacks embed_dim, encode(input_ids), ...``.
    """
    if isinstance(backbone, protocol):
        return
    members = protocol_members(protocol)
    missing = missing_members(backbone, protocol)
    lacks = "has none of them" if len(missing) == len(members) else f"lacks {', '.join(missing)}"
    raise TypeError(
        f"{task} needs a backbone with {', '.join(members.values())} "
        f"({protocol.__module__}.{protocol.__qualname__}); {type(backbone).__name__} {lacks}"
    )
