"""Embedding-space adversarial training (FGM, PGD, FreeLB) and the evaluation-time attack.

The perturbation δ (B, T, C) is added to the output of the backbone's token embedding
(`zoo.models.protocols.TokenEmbedder`: before positions, segments and norms), so it reaches the network
whether or not the embedding table trains (``freeze_embeddings``, ``lora``). Each step follows the
gradient of the task's own loss (`zoo.tasks.FinetuneTask.batch_loss`) with respect to δ, normalised per
example (a padded row, or one example of a packed row), and stays in the example's epsilon ball:

- ``fgm`` (Miyato et al., 2017): ``δ = ε g / ‖g‖`` with ``g = ∇_δ L(e)``; loss ``L(e) + w L(e + δ)``.
- ``pgd`` (Madry et al., 2018): ``δ_0 = 0``, ``δ_k = Π_ε(δ_{k-1} + α g_k / ‖g_k‖)`` with
  ``g_k = ∇_δ L(e + δ_{k-1})``, k = 1..K; loss ``L(e) + w L(e + δ_K)``.
- ``freelb`` (Zhu et al., 2020): the same ascent, and the adversarial term averages the whole trajectory,
  ``L(e) + w (1/K) Σ_k L(e + δ_k)``.

With ``norm: linf`` the step is ``α sign(g)`` and Π clamps every coordinate to [-ε, ε] (FGM is then
FGSM). The gradients that steer δ are taken with ``torch.autograd.grad`` with respect to δ only: they fill
no parameter's ``.grad``, draw no random numbers and read nothing back from the device, so Lightning's
single backward of the returned loss (with its gradient accumulation, AMP loss scaling, DDP reduction and
exact resume) is the only one that trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import check_non_negative, check_positive, check_positive_number

Method = Literal["fgm", "pgd", "freelb"]
Norm = Literal["l2", "linf"]
DEFAULT_STEPS = 3
"""``steps`` of ``pgd`` and ``freelb`` when not given."""


@dataclass(frozen=True)
class Adversarial:
    """Adversarial training on the token embeddings, as a fine-tuning task's ``adversarial`` argument
    (``--model.init_args.adversarial.method=pgd``); see the adversarial-training page of the docs.

    Args:
        method: ``fgm`` (one step of size ``epsilon``), ``pgd`` (``steps`` projected steps, the loss at
            the last point) or ``freelb`` (the same steps, the loss averaged over all of them).
        epsilon: Radius of each example's ball: the L2 norm of its whole perturbation (all its tokens
            and channels) with ``norm: l2``, the largest coordinate with ``norm: linf``.
        norm: ``l2`` (steps along the gradient divided by the example's gradient norm) or ``linf``
            (steps along its sign).
        steps: Ascent steps K of ``pgd`` and ``freelb`` (default 3); ``fgm`` takes one.
        step_size: Step α of ``pgd`` and ``freelb``; default ``2.5 * epsilon / steps`` (Madry et al.);
            ``fgm``'s step is ``epsilon``.
        weight: Weight w of the adversarial term in ``L(e) + w L_adv``. 0 trains on the clean loss alone
            (no extra passes), e.g. a baseline measured with ``attack_eval``.
        attack_eval: Also evaluate under attack: validation and test log ``val_adv_*`` / ``test_adv_*``
            (accuracy, F1, loss) on perturbations found against the model being evaluated, by FGM for
            ``fgm`` and by PGD with these ``steps`` and ``step_size`` for ``pgd`` and ``freelb``.
    """

    method: Method = "fgm"
    epsilon: float = 1.0
    norm: Norm = "l2"
    steps: int | None = None
    step_size: float | None = None
    weight: float = 1.0
    attack_eval: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("fgm", "pgd", "freelb"):
            raise ValueError(f"adversarial: method must be fgm, pgd or freelb, got {self.method!r}")
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"adversarial: norm must be l2 or linf, got {self.norm!r}")
        check_positive("adversarial", steps=self.steps)
        check_non_negative("adversarial", weight=self.weight)
        check_positive_number("adversarial", epsilon=self.epsilon, step_size=self.step_size)
        if self.method == "fgm" and (self.steps is not None or self.step_size is not None):
            given = "steps" if self.steps is not None else "step_size"
            raise ValueError(f"adversarial: {given} is for pgd and freelb; fgm takes one step of epsilon")
        if self.weight == 0 and not self.attack_eval:
            raise ValueError("adversarial: weight 0 without attack_eval does nothing; leave adversarial out")

    @property
    def num_steps(self) -> int:
        """K: 1 for ``fgm``, else ``steps`` (default 3)."""
        return 1 if self.method == "fgm" else self.steps or DEFAULT_STEPS

    @property
    def alpha(self) -> float:
        """The step α: ``epsilon`` for ``fgm``, else ``step_size`` (default ``2.5 * epsilon / steps``)."""
        if self.method == "fgm":
            return self.epsilon
        return self.step_size or 2.5 * self.epsilon / self.num_steps


class Attack(NamedTuple):
    """What `attack` found for one batch.

    Attributes:
        clean: The loss L(e) at the unperturbed embeddings (in the autograd graph).
        adversarial: The adversarial term (``pgd``/``fgm``: L(e + δ_K); ``freelb``: the mean over k of
            L(e + δ_k)), in the graph; ``None`` when `attack` was asked for the perturbations only.
        perturbations: δ_1 .. δ_K, each (B, T, C) float32, detached.
    """

    clean: Tensor
    adversarial: Tensor | None
    perturbations: list[Tensor]


def attack(
    loss_of: Callable[[dict[str, Tensor]], Tensor],
    batch: dict[str, Tensor],
    *,
    embedding: nn.Module,
    config: Adversarial,
    method: Method | None = None,
    scale: Callable[[Tensor], Tensor] | None = None,
    final_loss: bool = True,
) -> Attack:
    """Run ``config``'s ascent on the token-embedding output of ``batch`` against ``loss_of``.

    Forward passes: K + 1 with ``final_loss`` (the clean one included), K without. Backward passes taken
    here: K, each with respect to δ only (no weight gradients). The clean graph, and for ``freelb`` every
    graph, is kept for the caller's backward of ``clean + weight * adversarial``.

    Args:
        loss_of: The task's loss of a batch (a scalar), computed through the backbone.
        batch: The batch; packed rows (``document_ids``, ``sequence_spans``) are normalised per example.
        embedding: The backbone's ``token_embedding`` module, whose output (B, T, C) is perturbed.
        config: The method, ball and steps.
        method: Overrides ``config.method`` (the evaluation attack runs ``pgd`` for ``freelb``).
        scale: Multiplies the loss before each gradient with respect to δ (an AMP ``GradScaler.scale``, so
            float16 gradients do not underflow; the direction is unchanged). An example whose gradient
            is not finite (an overflow) gets no perturbation.
        final_loss: Compute the adversarial term (training); ``False``: stop at δ_K (evaluation).
    """
    method = method or config.method
    steps = 1 if method == "fgm" else config.num_steps
    alpha = config.epsilon if method == "fgm" else config.alpha
    keep_all = method == "freelb" and final_loss
    with perturbed(embedding) as perturbation:
        clean = loss = loss_of(batch)  # the forward made δ_0: zeros that require grad
        if perturbation.delta is None:
            raise RuntimeError(f"the loss never called the token embedding {type(embedding).__name__}")
        deltas, terms = [], []
        for k in range(steps):
            (grad,) = torch.autograd.grad(
                scale(loss) if scale is not None else loss,
                perturbation.delta,
                retain_graph=keep_all or (k == 0 and final_loss),  # trained on: the clean graph (all: freelb)
                materialize_grads=True,
            )
            delta = ascend(
                perturbation.delta.detach(),
                grad,
                batch,
                epsilon=config.epsilon,
                alpha=alpha,
                norm=config.norm,
            )
            deltas.append(delta)
            last = k == steps - 1
            if last and not final_loss:
                break
            perturbation.delta = delta.detach().requires_grad_(not last)  # a leaf; `deltas` keeps no grad
            loss = loss_of(batch)
            if keep_all or last:
                terms.append(loss)
    adversarial = torch.stack(terms).mean() if terms else None
    return Attack(clean, adversarial, deltas)


def ascend(
    delta: Tensor, grad: Tensor, batch: dict[str, Tensor], *, epsilon: float, alpha: float, norm: Norm
) -> Tensor:
    """One projected ascent step: ``Π_ε(δ + α d)``, d the normalised gradient of each example
    (``g / ‖g‖`` for ``l2``, ``sign(g)`` for ``linf``), Π the projection onto each example's ball.
    Examples with a zero or non-finite gradient keep their δ. Shapes: (B, T, C) in and out."""
    grad_norm = example_norms(grad, batch)  # (B, T, 1)
    usable = torch.isfinite(grad_norm) & (grad_norm > 0)
    grad = torch.where(usable, grad, 0.0)  # a NaN in an unusable example would survive a multiply by 0
    direction = grad.sign() if norm == "linf" else grad / torch.where(usable, grad_norm, 1.0)
    delta = delta + alpha * direction
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    return delta * (epsilon / example_norms(delta, batch)).clamp(max=1.0)  # 0/0 cannot occur: inf -> 1


def example_norms(x: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """The L2 norm of each example's slice of ``x`` (B, T, C), over all its positions and channels, at
    each of its positions: (B, T, 1). An example is a row, or in packed rows (``sequence_spans`` (N, 3):
    row, start, length; ``document_ids`` (B, T), -1 at padding) one example; packed padding gets 0."""
    squares = x.double().square().sum(-1)  # (B, T); float64: the per-example sums below are differences
    if "sequence_spans" not in batch:
        return squares.sum(1, keepdim=True).sqrt().unsqueeze(-1).expand(*x.shape[:2], 1).to(x.dtype)
    row, start, length = batch["sequence_spans"].unbind(1)  # (N,) each
    running = F.pad(squares.cumsum(1), (1, 0))  # (B, T + 1): sums of the positions before each index
    per_example = (running[row, start + length] - running[row, start]).clamp(min=0).sqrt()  # (N,)
    per_example = torch.cat([per_example, per_example.new_zeros(1)])  # (N + 1,): the last for padding
    docs = batch["document_ids"]
    docs = torch.where(docs >= 0, docs, len(per_example) - 1)  # (B, T)
    return per_example[docs].unsqueeze(-1).to(x.dtype)  # (B, T, 1)


class _Perturbation:
    """A forward hook adding ``delta`` (B, T, C) to its module's output; a ``None`` delta becomes a zero
    one that requires grad (the clean point, whose gradient steers the first step)."""

    def __init__(self, delta: Tensor | None = None) -> None:
        self.delta = delta

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if self.delta is None:
            self.delta = torch.zeros(
                output.shape, dtype=torch.float32, device=output.device, requires_grad=True
            )
        if self.delta.shape != output.shape:
            raise RuntimeError(
                f"the perturbation is {tuple(self.delta.shape)} but {type(module).__name__} gave "
                f"{tuple(output.shape)}: the token embedding ran on something other than the batch"
            )
        return output + self.delta.to(output.dtype)


@contextlib.contextmanager
def perturbed(embedding: nn.Module, delta: Tensor | None = None) -> Iterator[_Perturbation]:
    """Within the block, ``embedding``'s output carries ``delta`` (set or replace it through the yielded
    object's ``delta``; ``None``: a zero δ requiring grad, made at the first call)."""
    perturbation = _Perturbation(delta)
    handle = embedding.register_forward_hook(perturbation)
    try:
        yield perturbation
    finally:
        handle.remove()
