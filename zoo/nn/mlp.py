"""Position-wise feed-forward network."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``Linear -> activation -> Linear -> dropout``.

    Args:
        embed_dim: Input and output width C.
        hidden_dim: Inner width (4·C in GPT-2 and BERT).
        activation: Non-linearity module (GPT-2: ``nn.GELU(approximate="tanh")``; BERT: ``nn.GELU()``).
        dropout: Dropout on the output (training only).
        bias: Whether the linear layers have biases.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        hidden_dim: int,
        activation: nn.Module,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.activation = activation
        self.out_proj = nn.Linear(hidden_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.dropout(self.out_proj(self.activation(self.in_proj(x))))


class GatedMLP(nn.Module):
    """Gated feed-forward network (Shazeer 2020): ``down(activation(gate(x)) * up(x))``, then dropout.

    With ``activation=nn.SiLU()`` this is SwiGLU, the MLP of Llama, Mistral and Qwen.

    Args:
        embed_dim: Input and output width C.
        hidden_dim: Inner width (Llama: about 8·C/3).
        activation: Non-linearity applied to the gate (``nn.SiLU()`` for SwiGLU, ``nn.GELU()`` for GeGLU).
        dropout: Dropout on the output (training only).
        bias: Whether the linear layers have biases (Llama's have none).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        hidden_dim: int,
        activation: nn.Module,
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.activation = activation
        self.down_proj = nn.Linear(hidden_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.dropout(self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x)))
