"""`zoo.tasks.settings.Decoding`: one settings object for every decoding task, old spellings migrated."""

from __future__ import annotations

import dataclasses

import pytest

from zoo.checkpoint import migrate_args, migrate_hparams, migrate_overrides
from zoo.tasks import CausalLM, MaskedLM, Summarization, Translation
from zoo.tasks.settings import Decoding
from zoo.tasks.summarization import DECODING as SUMMARIZATION_DECODING
from zoo.tasks.translation import DECODING as TRANSLATION_DECODING

OLD_TRANSLATION = {
    "label_smoothing": 0.1,
    "beam_size": 3,
    "val_beam_size": 0,
    "length_penalty": 0.6,
    "max_len_a": 1.0,
    "max_len_b": 4,
    "min_len": 1,
    "no_repeat_ngram_size": 2,
}


def test_old_seq2seq_hparams_move_into_decoding_under_the_new_names():
    new = migrate_hparams(dict(OLD_TRANSLATION), Translation)
    assert new == {
        "label_smoothing": 0.1,
        "val_num_beams": 0,
        "decoding": {
            **dataclasses.asdict(TRANSLATION_DECODING),
            "num_beams": 3,
            "length_penalty": 0.6,
            "max_len_a": 1.0,
            "max_new_tokens": 4,
            "min_length": 1,
            "no_repeat_ngram_size": 2,
        },
    }
    assert Decoding(**new["decoding"]).num_beams == 3
    assert migrate_hparams(new, Translation) is new  # today's layout comes back as it is


def test_old_causal_lm_hparams_move_into_decoding_but_masked_lm_keeps_its_top_k():
    old = {"max_new_tokens": 50, "temperature": 0.8, "top_k": 200, "top_p": None, "stop_tokens": None,
           "num_beams": 1, "length_penalty": 1.0}  # fmt: skip
    new = migrate_hparams(old, CausalLM)
    assert new == {"decoding": {**dataclasses.asdict(Decoding()), **old, "stop_tokens": []}}
    masked = {"top_k": 5}
    assert migrate_hparams(masked, MaskedLM) is masked


def test_load_from_checkpoint_overrides_change_one_field_of_the_saved_decoding():
    saved = {"decoding": dataclasses.asdict(Decoding(temperature=0.8, top_k=200))}
    overrides = migrate_overrides({"temperature": 0.5}, saved, CausalLM)
    assert overrides == {"decoding": {**saved["decoding"], "temperature": 0.5}}
    untouched = {"strict": True}
    assert migrate_overrides(untouched, saved, CausalLM) is untouched


def test_old_command_line_spellings_are_rewritten_for_decoding_tasks_only():
    args = ["fit", "--model.init_args.beam_size=2", "--model.val_beam_size", "0", "--model.init_args.top_k=3"]
    assert migrate_args(args, "zoo.tasks.Translation") == [
        "fit",
        "--model.init_args.decoding.num_beams=2",
        "--model.init_args.val_num_beams",
        "0",
        "--model.init_args.decoding.top_k=3",
    ]
    assert migrate_args(args, "zoo.tasks.MaskedLM") is args


def test_each_task_refuses_the_decoding_fields_it_does_not_use():
    with pytest.raises(ValueError, match=r"decoding.temperature: Translation does not use it"):
        Translation(_seq2seq(), decoding=Decoding(temperature=0.5))
    with pytest.raises(ValueError, match=r"decoding.min_length: CausalLM does not use it"):
        CausalLM(_gpt(), decoding=Decoding(min_length=2))
    with pytest.raises(ValueError, match=r"decoding: num_beams must be"):
        Decoding(num_beams=0)


def test_decoding_is_saved_as_plain_data_and_comes_back_as_the_object():
    task = Summarization(_seq2seq(bos=101, eos=102))
    assert task.hparams["decoding"] == dataclasses.asdict(SUMMARIZATION_DECODING)
    assert "beam_size" not in task.hparams and task.hparams["val_num_beams"] == 1
    again = Summarization(**{k: v for k, v in task.hparams.items() if k != "backbone"}, backbone=_seq2seq())
    assert again.decoding == SUMMARIZATION_DECODING


def _seq2seq(bos: int = 1, eos: int = 2):
    from zoo.models.seq2seq import Transformer

    return Transformer(vocab_size=128, max_seq_len=16, embed_dim=16, num_heads=2, num_encoder_layers=1,
                       num_decoder_layers=1, hidden_dim=32)  # fmt: skip


def _gpt():
    from zoo.models.gpt2 import GPT2

    return GPT2(vocab_size=32, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1)


@pytest.mark.parametrize("joined", [False, True])
def test_old_config_files_are_rewritten_given_either_way(tmp_path, joined):
    from zoo.cli import _migrated_config_files

    old = tmp_path / "old.yaml"
    old.write_text("model:\n  class_path: zoo.tasks.Translation\n  init_args:\n    beam_size: 3\n")
    args = ["fit", f"--config={old}"] if joined else ["fit", "--config", str(old)]
    new = _migrated_config_files(args, "zoo.tasks.Translation")
    text = new[1].removeprefix("--config=") if joined else new[2]
    assert new[1].startswith("--config=") == joined and "beam_size" not in text
    assert "num_beams: 3" in text
