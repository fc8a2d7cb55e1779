"""The backbone contract: zoo's families satisfy the protocols their tasks check, and a backbone that does
not gets one message naming what it lacks, from Python and from the `zoo` command."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from torch import Tensor, nn

from zoo.cli import main
from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.models.llama import Llama
from zoo.models.protocols import (
    CausalDecoder,
    Encoder,
    EncoderDecoder,
    IncrementalDecoder,
    MaskedLMEncoder,
    PackedHiddenStates,
    check_backbone,
)
from zoo.models.seq2seq import Transformer
from zoo.tasks import CausalLM, MaskedLM, Translation
from zoo.tasks.decoding import generate
from zoo.tasks.decoding import steps as decoding_steps

USER_PROJECT = Path(__file__).resolve().parents[1] / "fixtures" / "user_project"
TINY = dict(vocab_size=40, max_seq_len=16, embed_dim=16, num_heads=2)


@pytest.fixture
def my_lm(monkeypatch):
    monkeypatch.syspath_prepend(str(USER_PROJECT))
    import my_lm

    return my_lm


@pytest.mark.parametrize(
    ("family", "protocols", "not_protocols"),
    [
        (
            lambda: GPT2(**TINY, num_layers=1),
            (CausalDecoder, IncrementalDecoder, PackedHiddenStates),
            (Encoder, EncoderDecoder),
        ),
        (
            lambda: Llama(**TINY, num_layers=1),
            (CausalDecoder, IncrementalDecoder, PackedHiddenStates),
            (Encoder, EncoderDecoder),
        ),
        (
            lambda: Bert(**TINY, num_layers=1),
            (Encoder, MaskedLMEncoder, PackedHiddenStates),
            (IncrementalDecoder, EncoderDecoder),
        ),
        (
            lambda: Transformer(**TINY, num_encoder_layers=1, num_decoder_layers=1),
            (EncoderDecoder,),
            (IncrementalDecoder, MaskedLMEncoder, PackedHiddenStates),
        ),
    ],
    ids=["GPT2", "Llama", "Bert", "Transformer"],
)
def test_every_family_satisfies_its_protocols(family, protocols, not_protocols):
    backbone = family()
    for protocol in protocols:
        assert isinstance(backbone, protocol), protocol.__name__
        check_backbone(backbone, protocol, task="test")
    for protocol in not_protocols:
        assert not isinstance(backbone, protocol), protocol.__name__


def test_tasks_build_on_their_families():
    CausalLM(GPT2(**TINY, num_layers=1))
    MaskedLM(Bert(**TINY, num_layers=1))
    Translation(Transformer(**TINY, num_encoder_layers=1, num_decoder_layers=1))


def test_causal_lm_keeps_accepting_a_plain_backbone(my_lm):
    task = CausalLM(my_lm.GRULM(40, embed_dim=8))
    assert isinstance(task.backbone, CausalDecoder)


def test_masked_lm_names_every_member_a_plain_backbone_lacks(my_lm):
    with pytest.raises(TypeError) as err:
        MaskedLM(my_lm.GRULM(40, embed_dim=8))
    message = str(err.value)
    assert message.startswith(
        "MaskedLM needs a backbone with embed_dim, hidden_states(input_ids), type_vocab_size, layers, "
        "embeddings"
    )
    assert "mlm_logits(hidden), nsp_logits(pooled), pool(hidden)" in message
    assert "(zoo.models.protocols.MaskedLMEncoder); GRULM has none of them" in message


def test_a_backbone_missing_one_member_gets_that_member_named():
    class HeadlessBert(Bert):
        mlm_logits = None  # what a user's encoder without an MLM head looks like to the task

    with pytest.raises(TypeError, match=r"MaskedLMEncoder\); HeadlessBert lacks mlm_logits\(hidden\)$"):
        MaskedLM(HeadlessBert(**TINY, num_layers=1))


def test_translation_names_the_members_a_decoder_only_backbone_lacks():
    with pytest.raises(TypeError) as err:
        Translation(GPT2(**TINY, num_layers=1))
    assert str(err.value).endswith(
        "(zoo.models.protocols.EncoderDecoder); GPT2 lacks encode(src_ids), decode(tgt_ids, memory)"
    )


@pytest.mark.parametrize(
    ("task", "protocol"),
    [
        ("zoo.tasks.MaskedLM", "MaskedLMEncoder); GRULM has none of them"),
        (
            "zoo.tasks.Translation",
            "EncoderDecoder); GRULM lacks max_seq_len, encode(src_ids), decode(tgt_ids, memory), "
            "init_cache(batch_size, target_len, source_len)",
        ),
    ],
)
def test_zoo_command_reports_the_missing_members_in_one_line(
    task, protocol, stdlib_text_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(USER_PROJECT))
    monkeypatch.chdir(tmp_path)
    argv = [
        "fit",
        f"--model={task}",
        "--model.init_args.backbone=my_lm.GRULM",
        "--data=zoo.data.TextDataModule",
        f"--data.init_args.files=[{stdlib_text_file}]",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--trainer.accelerator=cpu",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    assert errors[0].startswith(f"error: TypeError: {task.rpartition('.')[2]} needs a backbone with ")
    assert errors[0].endswith(f"(zoo.models.protocols.{protocol}")


def test_generation_without_a_kv_cache_warns_once_naming_the_missing_members(my_lm, monkeypatch):
    monkeypatch.setattr(decoding_steps, "_WARNED_NO_CACHE", set())
    backbone = my_lm.GRULM(40, embed_dim=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = generate(backbone, [[1, 2, 3]], max_new_tokens=4, temperature=0.0)
        generate(backbone, [[1, 2]], max_new_tokens=2, temperature=0.0)
    said = [str(w.message) for w in caught if "IncrementalDecoder" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith("GRULM has no max_seq_len, vocab_size, hidden_states(input_ids), init_cache(")
    assert "O(T²)" in said[0]
    assert len(first[0]) == 4


def test_generation_with_a_kv_cache_does_not_warn(monkeypatch):
    monkeypatch.setattr(decoding_steps, "_WARNED_NO_CACHE", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(GPT2(**TINY, num_layers=1), [[1, 2, 3]], max_new_tokens=3, temperature=0.0)
    assert not [w for w in caught if "IncrementalDecoder" in str(w.message)]


class _Probe(nn.Module):
    """Counts the calls of an incremental decoder, to see that generation uses its cache."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.max_seq_len, self.vocab_size, self.lengths = inner, inner.max_seq_len, 40, []

    def forward(self, input_ids: Tensor, **kwargs) -> Tensor:
        self.lengths.append(input_ids.shape[1])
        return self.inner(input_ids, **kwargs)

    def hidden_states(self, input_ids: Tensor, **kwargs) -> Tensor:
        return self.inner.hidden_states(input_ids, **kwargs)

    def init_cache(self, batch_size: int, max_seq_len: int | None = None):
        return self.inner.init_cache(batch_size, max_seq_len)


def test_an_incremental_decoder_feeds_one_token_per_step():
    probe = _Probe(GPT2(**TINY, num_layers=1))
    generate(probe, [[1, 2, 3]], max_new_tokens=4, temperature=0.0)
    assert probe.lengths == [3, 1, 1, 1]
