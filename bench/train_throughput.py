"""Training throughput of zoo's models + task losses against Hugging Face transformers, same sizes, on CPU.

    python bench/train_throughput.py --model bert   # Bert + MaskedLM vs BertForPreTraining
    python bench/train_throughput.py --model gpt2   # GPT2 + CausalLM vs GPT2LMHeadModel

Each side runs the same plain PyTorch loop (forward, loss, backward, AdamW step, zero_grad) on the same
random batch, fp32, ``torch.set_num_threads(--threads)``. After a warm-up the two alternate for
``--rounds`` rounds of ``--steps`` steps, so drifting machine load hits both alike; tokens/s is summed over
the rounds. Hugging Face runs with its default attention implementation (reported; ``sdpa``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.tasks import CausalLM, MaskedLM

BERT = dict(vocab_size=8192, embed_dim=384, num_layers=6, num_heads=6, hidden_dim=1536, batch=32, seq=128)
GPT = dict(vocab_size=8192, embed_dim=384, num_layers=6, num_heads=6, hidden_dim=1536, batch=16, seq=256)


@dataclass
class Side:
    name: str
    attention: str
    model: nn.Module
    loss: Callable[[], Tensor]
    optimizer: torch.optim.Optimizer | None = None

    def step(self) -> None:
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def bert_batch(c: dict, g: torch.Generator) -> dict[str, Tensor]:
    """A random MLM + NSP batch of ``c["batch"]`` rows of ``c["seq"]`` tokens, 15% of them masked."""
    B, T = c["batch"], c["seq"]
    input_ids = torch.randint(5, c["vocab_size"], (B, T), generator=g)
    input_ids[:, 0], input_ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    chosen = torch.rand(B, T, generator=g) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    return {
        "input_ids": torch.where(chosen, 4, input_ids),  # [MASK]
        "attention_mask": torch.ones(B, T, dtype=torch.long),
        "token_type_ids": (torch.arange(T) >= T // 2).long().expand(B, T).contiguous(),
        "labels": torch.where(chosen, input_ids, -100),
        "next_sentence_label": torch.randint(0, 2, (B,), generator=g),
    }


def bert_models(c: dict) -> tuple[MaskedLM, nn.Module]:
    """zoo's ``MaskedLM(Bert)`` and transformers' ``BertForPreTraining`` of the sizes in ``c``."""
    from transformers import BertConfig, BertForPreTraining

    ours = MaskedLM(
        Bert(
            vocab_size=c["vocab_size"],
            max_seq_len=512,
            embed_dim=c["embed_dim"],
            num_heads=c["num_heads"],
            num_layers=c["num_layers"],
            hidden_dim=c["hidden_dim"],
        )
    )
    hf = BertForPreTraining(
        BertConfig(
            vocab_size=c["vocab_size"],
            hidden_size=c["embed_dim"],
            num_hidden_layers=c["num_layers"],
            num_attention_heads=c["num_heads"],
            intermediate_size=c["hidden_dim"],
            max_position_embeddings=512,
        )
    )
    return ours.train(), hf.train()


def gpt2_batch(c: dict, g: torch.Generator) -> dict[str, Tensor]:
    """Random ``input_ids`` (B, T) and their next tokens as ``labels``."""
    tokens = torch.randint(0, c["vocab_size"], (c["batch"], c["seq"] + 1), generator=g)
    return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}


def gpt2_models(c: dict) -> tuple[CausalLM, nn.Module]:
    """zoo's ``CausalLM(GPT2)`` and transformers' ``GPT2LMHeadModel`` of the sizes in ``c``, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    ours = CausalLM(
        GPT2(
            vocab_size=c["vocab_size"],
            max_seq_len=1024,
            embed_dim=c["embed_dim"],
            num_heads=c["num_heads"],
            num_layers=c["num_layers"],
            hidden_dim=c["hidden_dim"],
            dropout=0.0,
        )
    )
    config = GPT2Config(
        vocab_size=c["vocab_size"],
        n_positions=1024,
        n_embd=c["embed_dim"],
        n_layer=c["num_layers"],
        n_head=c["num_heads"],
        n_inner=c["hidden_dim"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return ours.train(), GPT2LMHeadModel(config).train()


def hf_gpt2_loss(hf: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    # transformers shifts the labels itself: the same next-token targets, less the last position's
    return hf(batch["input_ids"], labels=batch["input_ids"]).loss


def bert_sides(g: torch.Generator) -> tuple[list[Side], int]:
    batch = bert_batch(BERT, g)
    ours, hf = bert_models(BERT)
    sides = [
        Side("zoo Bert + MaskedLM", "F.scaled_dot_product_attention", ours, lambda: ours.losses(batch).loss),
        Side("transformers BertForPreTraining", hf.config._attn_implementation, hf, lambda: hf(**batch).loss),
    ]
    return sides, BERT["batch"] * BERT["seq"]


def gpt2_sides(g: torch.Generator) -> tuple[list[Side], int]:
    batch = gpt2_batch(GPT, g)
    ours, hf = gpt2_models(GPT)
    sides = [
        Side(
            "zoo GPT2 + CausalLM",
            "F.scaled_dot_product_attention",
            ours,
            lambda: ours.loss(ours(batch["input_ids"]), batch["labels"]),
        ),
        Side(
            "transformers GPT2LMHeadModel",
            hf.config._attn_implementation,
            hf,
            lambda: hf_gpt2_loss(hf, batch),
        ),
    ]
    return sides, GPT["batch"] * GPT["seq"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["bert", "gpt2"], default="bert")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sides, tokens_per_step = (bert_sides if args.model == "bert" else gpt2_sides)(
        torch.Generator().manual_seed(0)
    )
    config = BERT if args.model == "bert" else GPT
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, config {config}")
    for side in sides:
        n = sum(p.numel() for p in side.model.parameters())
        print(f"  {side.name}: {n / 1e6:.1f}M parameters, attention: {side.attention}")
        for _ in range(args.warmup):
            side.step()
    seconds: dict[str, list[float]] = {side.name: [] for side in sides}
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            start = time.perf_counter()
            for _ in range(args.steps):
                side.step()
            seconds[side.name].append(time.perf_counter() - start)
        line = ", ".join(
            f"{name}: {tokens_per_step * args.steps / s[-1]:,.0f} tok/s" for name, s in seconds.items()
        )
        print(f"round {r + 1}: {line}")
    rates = {name: tokens_per_step * args.steps * len(s) / sum(s) for name, s in seconds.items()}
    ours, theirs = (rates[side.name] for side in sides)
    round_ratios = [b / a for a, b in zip(*seconds.values())]  # ours/theirs per round (time theirs / ours)
    for name, rate in rates.items():
        print(f"{name:36s} {rate:10,.0f} tokens/s")
    print(
        f"ratio ours/transformers: {ours / theirs:.2f}x "
        f"(per round: median {statistics.median(round_ratios):.2f}x, "
        f"min {min(round_ratios):.2f}x, max {max(round_ratios):.2f}x)"
    )


if __name__ == "__main__":
    main()
