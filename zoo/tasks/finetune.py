"""What every fine-tuning task shares: start from pretrained weights named in the YAML, optionally freeze
the embeddings, give lower layers smaller learning rates, and train (and evaluate) against adversarial
perturbations of the token embeddings."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from zoo.checkpoint import init_arguments
from zoo.errors import check_positive, check_probability
from zoo.models.protocols import Encoder, HiddenStates, TokenEmbedder
from zoo.tasks.adversarial import Adversarial, attack, perturbed
from zoo.tasks.base import BackboneTask
from zoo.tasks.optim import LRSchedulerCallable, OptimizerCallable, adamw, warmup_cosine_schedule

OPTIMIZER = adamw(lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01)
"""Every fine-tuning task's default ``optimizer``: AdamW at 5e-5 (the top of BERT's fine-tuning grid and
the Hugging Face Trainer's default), betas (0.9, 0.999), decay 0.01."""
LR_SCHEDULER = warmup_cosine_schedule(warmup_steps=0, min_lr_ratio=0.0)
"""`FinetuneTask`'s default ``lr_scheduler``: no warm-up, cosine to 0."""


class FinetuneTask(BackboneTask):
    """Base class for tasks that put a head on a (usually pretrained) backbone.

    The backbone is a `zoo.models.protocols.HiddenStates`: ``hidden_states(input_ids, *, attention_mask)
    -> (B, T, C)`` and ``embed_dim``; an `zoo.models.protocols.Encoder` (BERT) also gets the batch's
    ``token_type_ids``. Freezing needs its ``embeddings``, layer-wise learning rates its ``layers``,
    adversarial training its ``token_embedding`` (`zoo.models.protocols.TokenEmbedder`).

    A subclass defines `batch_loss` (its training objective for a batch) and, for ``attack_eval``,
    `evaluate` (its metrics for one batch and stage); `training_step`, `validation_step` and `test_step`
    are this class's, so every task gets ``adversarial`` without code of its own. Logged in training:
    ``train_loss`` (the clean loss) and, with ``adversarial``, ``train_adv_loss`` (the adversarial term).

    Args:
        backbone: The network or its spec; see `BackboneTask`.
        pretrained: Weights to start from when training begins: a Hugging Face model directory (e.g.
            all-MiniLM-L6-v2's), a Hub name (online only) or a ``.ckpt`` written by a zoo task. The
            backbone's init_args must describe the same architecture (a mismatch names each argument).
            Not loaded when resuming from a checkpoint or when loading one with ``load_from_checkpoint``.
        layer_lr_decay: Layer-wise learning-rate decay (Clark et al., 2020): layer ``i`` (0-based) of ``L``
            trains at the optimizer's learning rate times ``layer_lr_decay ** (L - 1 - i)``, the embeddings
            at ``layer_lr_decay ** L`` times it; the top layer, the head and anything above the last layer
            at the optimizer's rate (each group's ``lr_scale``). 1.0 disables it.
        freeze_embeddings: Keep the backbone's embedding module (tokens, positions, segments, its norm)
            fixed; saves their gradients and optimizer state (the token table is most of a small BERT).
        optimizer: Optimizer spec, see `BackboneTask`. Default
            ``zoo.tasks.finetune.OPTIMIZER``: AdamW at 5e-5, betas (0.9, 0.999), decay 0.01.
        lr_scheduler: Learning-rate schedule spec, see `BackboneTask` (``None``: constant). Default
            ``zoo.tasks.finetune.LR_SCHEDULER``: no warm-up, cosine to 0.
        adversarial: Adversarial training on the token embeddings (`zoo.tasks.adversarial.Adversarial`:
            ``method`` fgm/pgd/freelb, ``epsilon``, ``norm``, ``steps``, ``step_size``, ``weight``,
            ``attack_eval``); each step trains on ``L(e) + weight * L_adv``. ``None``: plain training.
            See the adversarial-training page of the docs.
        **kwargs: Other arguments: `BackboneTask` (forwarded): ``compile``, ``activation_checkpointing``,
            ``lora``.

    Raises:
        ValueError: ``layer_lr_decay`` outside (0, 1]; ``adversarial`` for a backbone without a
            ``token_embedding``, or for a subclass without `batch_loss` (or `evaluate`, with
            ``attack_eval``). The message names the argument.
    """

    backbone_protocol = HiddenStates

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pretrained: str | None = None,
        layer_lr_decay: float = 1.0,
        freeze_embeddings: bool = False,
        optimizer: OptimizerCallable = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        adversarial: Adversarial | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, optimizer=optimizer, lr_scheduler=lr_scheduler, **kwargs)
        check_probability(type(self).__name__, open_low=True, layer_lr_decay=layer_lr_decay)
        self.pretrained = pretrained
        self.layer_lr_decay = layer_lr_decay
        self._initialised = False
        if freeze_embeddings:
            embeddings = getattr(self.backbone, "embeddings", None)
            if not isinstance(embeddings, nn.Module):
                raise ValueError(f"{type(self.backbone).__name__} has no `embeddings` module to freeze")
            embeddings.requires_grad_(False)
        self.adversarial = self._adversarial(adversarial)

    def _adversarial(self, adversarial: Adversarial | dict | None) -> Adversarial | None:
        """``adversarial`` checked against the backbone and recorded as a plain dict in the hyper-parameters
        (a checkpoint's plain dict comes back here), or left out of them by a subclass without it."""
        adversarial = Adversarial(**adversarial) if isinstance(adversarial, dict) else adversarial
        if adversarial is not None and not isinstance(self.backbone, TokenEmbedder):
            raise ValueError(
                f"adversarial perturbs the token embeddings, and {type(self.backbone).__name__} has no "
                "token_embedding (zoo.models.protocols.TokenEmbedder)"
            )
        owner = type(self)
        if adversarial is not None and adversarial.weight > 0 and owner.batch_loss is FinetuneTask.batch_loss:
            raise ValueError(f"adversarial: {owner.__name__} defines no batch_loss to train against")
        if adversarial is not None and adversarial.attack_eval and owner.evaluate is FinetuneTask.evaluate:
            raise ValueError(f"adversarial.attack_eval: {owner.__name__} defines no evaluate to run attacked")
        if "adversarial" in init_arguments(owner):
            plain = dataclasses.asdict(adversarial) if adversarial is not None else None
            self.save_hyperparameters({"adversarial": plain})  # plain: weights_only loads
        else:
            self.hparams.pop("adversarial", None)
        return adversarial

    @property
    def embed_dim(self) -> int:
        """Width C of the backbone's hidden states."""
        return self.backbone.embed_dim  # a member of the HiddenStates protocol, checked in __init__

    def label_head(self, num_labels: int, label_names: list[str] | None, *, dropout: float) -> nn.Sequential:
        """``Dropout -> Linear(embed_dim, num_labels)`` with BERT's initialisation.

        Args:
            num_labels: Output width.
            label_names: Names by id, or ``None``.
            dropout: Dropout probability before the linear layer.

        Raises:
            ValueError: ``num_labels`` not a positive integer, ``dropout`` (the task's
                ``classifier_dropout``) outside [0, 1], or ``label_names`` not naming every label.
        """
        owner = type(self).__name__
        check_positive(owner, num_labels=num_labels)
        check_probability(owner, classifier_dropout=dropout)
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"{owner}: {len(label_names)} label_names for num_labels={num_labels}")
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.embed_dim, num_labels))
        nn.init.normal_(head[1].weight, std=0.02)
        nn.init.zeros_(head[1].bias)
        return head

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.load_pretrained_once()

    @property
    def attack_eval(self) -> bool:
        """Whether validation and test also run under attack (``adversarial.attack_eval``)."""
        return self.adversarial is not None and self.adversarial.attack_eval

    def batch_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The training loss of one batch, a scalar: what `training_step` minimises and the adversarial
        methods maximise over the perturbation. Subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} defines no batch_loss")

    def evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        """Update and log the metrics of ``stage`` for one batch: ``val`` or ``test``, and ``val_adv`` /
        ``test_adv`` (the same batch under attack) when `attack_eval`. Subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} defines no evaluate")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        n = len(batch["sequence_spans"]) if "sequence_spans" in batch else len(batch["input_ids"])
        adversarial = self.adversarial
        if adversarial is None or adversarial.weight == 0:
            loss = self.batch_loss(batch)
            self.log("train_loss", loss, batch_size=n)
            return loss
        found = attack(
            self.batch_loss,
            batch,
            embedding=self.backbone.token_embedding,
            config=adversarial,
            scale=self._loss_scale(),
        )
        self.log("train_loss", found.clean, batch_size=n)
        self.log("train_adv_loss", found.adversarial, batch_size=n)
        return found.clean + adversarial.weight * found.adversarial

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate_stage(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate_stage(batch, "test")

    def _evaluate_stage(self, batch: dict[str, Tensor], stage: str) -> None:
        self.evaluate(batch, stage)
        if self.attack_eval:
            with self.under_attack(batch) as attacked:
                self.evaluate(attacked, f"{stage}_adv")

    @contextlib.contextmanager
    def under_attack(self, batch: dict[str, Tensor]) -> Iterator[dict[str, Tensor]]:
        """Within the block, the backbone's token embeddings carry the evaluation attack found for
        ``batch`` against the current weights (FGM for ``fgm``, PGD for ``pgd`` and ``freelb``; gradients
        on even inside ``validate``'s inference mode); yields the batch to evaluate."""
        config = self.adversarial
        if config is None:
            raise ValueError("under_attack needs the task's adversarial option")
        method = "fgm" if config.method == "fgm" else "pgd"
        with torch.inference_mode(False), torch.enable_grad():
            # inference-mode tensors (validate/test) cannot be saved for backward: normal copies
            batch = {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}
            found = attack(
                self.batch_loss,
                batch,
                embedding=self.backbone.token_embedding,
                config=config,
                method=method,
                scale=self._loss_scale(),
                final_loss=False,
            )
        with perturbed(self.backbone.token_embedding, found.perturbations[-1]):
            yield batch

    def _loss_scale(self) -> Callable[[Tensor], Tensor] | None:
        """The AMP gradient scaler's ``scale`` (16-mixed), for the gradients that steer the attack."""
        plugin = self._trainer.precision_plugin if self._trainer is not None else None
        scaler = getattr(plugin, "scaler", None)
        return scaler.scale if scaler is not None else None

    def features(self, batch: dict[str, Tensor], output_positions: Tensor | None = None) -> Tensor:
        """Last-layer hidden states (B, T, C) of a batch with ``input_ids`` and ``attention_mask``; of packed
        rows when it has ``document_ids`` (`zoo.data.collate.pack_batch`). With ``output_positions``
        (B, N) (a backbone with ``accepts_output_positions``) the last layer computes those rows only:
        (B, N, C).

        Raises:
            ValueError: A packed batch for a backbone that is not a `PackedHiddenStates`.
        """
        mask = batch.get("attention_mask")
        extra: dict[str, Tensor | None] = self.packed_rows(batch, otherwise="bucketed")
        if extra:
            mask = None  # packed rows: padding is a sequence of its own
        elif mask is not None and bool(mask.all()):
            mask = None  # no padding in this batch: attention runs unmasked, on a faster kernel
        if isinstance(self.backbone, Encoder):  # segment ids: BERT's sentence A/B
            extra["token_type_ids"] = batch.get("token_type_ids")
        if output_positions is not None:
            extra["output_positions"] = output_positions
        return self.backbone.hidden_states(batch["input_ids"], attention_mask=mask, **extra)

    def parameter_groups(self) -> list[dict[str, Any]]:
        if self.layer_lr_decay == 1.0:
            return super().parameter_groups()
        layers = getattr(self.backbone, "layers", ())
        num_layers = len(layers)
        depth_of = _depths(getattr(self.backbone, "embeddings", None), layers)
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for p in self.parameters():
            if not p.requires_grad:
                continue
            depth = depth_of.get(id(p), num_layers + 1)
            decay = p.dim() >= 2
            group = groups.setdefault(
                (depth, decay),
                {"params": [], "lr_scale": self.layer_lr_decay ** max(0, num_layers - depth)}
                | ({} if decay else {"weight_decay": 0.0}),
            )
            group["params"].append(p)
        return [groups[k] for k in sorted(groups)]


def _depths(embeddings: nn.Module | None, layers: Any) -> dict[int, int]:
    """``{id(parameter): depth}``: 0 for the backbone's embeddings (a weight tied to them, like BERT's MLM
    decoder, included), ``i + 1`` for block ``i`` of ``layers``; parameters absent here (the head, a final
    norm, a pooler) are above the last layer. Found by module, not by name, so ``encoder.layers.<i>``,
    ``decoder.layers.<i>`` and wrapped blocks all count."""
    depth = {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    if isinstance(embeddings, nn.Module):
        depth |= {id(p): 0 for p in embeddings.parameters()}
    return depth
