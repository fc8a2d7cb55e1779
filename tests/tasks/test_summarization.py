"""Summarization: the data module reads and truncates real DialogSum records and names bad lines, the
shared search's no-repeat-n-gram and minimum-length options hold, and the shipped recipe fits (logging
val ROUGE) and summarizes a file through the `zoo` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, shared_file
from zoo.cli import main
from zoo.data.summarization import SummarizationDataModule
from zoo.models.bert import BertEncoderDecoder
from zoo.tasks.decoding import Ending, block_repeated_ngrams, decode_beams, decode_one
from zoo.tasks.settings import Decoding
from zoo.tasks.summarization import Summarization

RECIPE = REPO / "recipes" / "summarization" / "dialogsum-minilm.yaml"
CLS, SEP, PAD = 101, 102, 0


def _dev_records(n: int) -> list[dict]:
    lines = shared_file("dialogsum/dialogsum.dev.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def _jsonl(path: Path, records: list[dict], *, final_newline: bool = True) -> str:
    text = "\n".join(json.dumps(r) for r in records) + ("\n" if final_newline else "")
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- data ------------------------------------------------------------------------------------------
@pytest.fixture
def minilm_data(tmp_path, minilm_dir) -> SummarizationDataModule:
    records = _dev_records(40)
    return SummarizationDataModule(
        _jsonl(tmp_path / "train.jsonl", records, final_newline=False),  # as DialogSum's train file
        _jsonl(tmp_path / "dev.jsonl", records),
        tokenizer=str(minilm_dir),
        max_source_len=64,
        max_target_len=16,
        max_tokens=256,
        cache_dir=str(tmp_path / "cache"),
    )


def test_reads_jsonl_truncates_and_lays_out_bert_batches(minilm_data) -> None:
    data = minilm_data
    data.prepare_data()
    data.setup("fit")
    assert (data.pad_token_id, data.bos_token_id, data.eos_token_id) == (PAD, CLS, SEP)
    assert data.stats["train"]["kept"] == 40 and data.stats["train"]["truncated_sources"] > 30
    assert data.stats["val"]["truncated_targets"] > 0  # 16 positions are fewer than most summaries need
    rows = 0
    for batch in data.val_dataloader():
        ids, mask = batch["input_ids"], batch["attention_mask"]
        dec, labels = batch["decoder_input_ids"], batch["labels"]
        assert ids.shape[1] <= 64 and dec.shape[1] <= 16 and dec.shape == labels.shape
        assert (ids[:, 0] == CLS).all() and (dec[:, 0] == CLS).all()  # [CLS] dialogue [SEP], [CLS] summary
        last = mask.sum(1) - 1
        assert (ids[torch.arange(len(ids)), last] == SEP).all()
        real = labels != -100
        assert (labels[torch.arange(len(labels)), real.sum(1) - 1] == SEP).all()  # summary [SEP]
        body = (real & (labels != SEP))[:, :-1]  # the summary's pieces
        assert torch.equal(dec[:, 1:][body], labels[:, :-1][body])  # labels are the input shifted by one
        rows += len(ids)
        references = {r["summary"] for r in _dev_records(40)}
        assert set(batch["references"]) <= references  # whole raw summaries, not truncated ones
    assert rows == 40
    text = data.decode(data.encode("#Person1#: Hello, Mr. Smith."))
    assert text == "#person1#: hello, mr. smith."  # BERT's uncased pieces, joined back and tidied


@pytest.mark.parametrize(
    ("decoded", "tidy"),
    [
        ("# person1 # and # person2 # are talking.", "#person1# and #person2# are talking."),
        ("# person1 # ' s wife isn ' t here ; she ' ll call .", "#person1#'s wife isn't here; she'll call."),
        ("a well - done steak ( $ 5. 00 ) at 5 : 30 p. m .", "a well-done steak ($5.00) at 5:30 p.m."),
        ("2 / 3 of their friends ' books , 1, 000 in all !", "2/3 of their friends' books, 1,000 in all!"),
        ("rock ' n ' roll", "rock ' n ' roll"),  # nothing it cannot tell
    ],
)
def test_wordpiece_spacing_is_tidied_without_changing_rouge_words(decoded, tidy) -> None:
    from zoo.data.summarization import tidy_wordpiece_text
    from zoo.tasks.rouge import rouge_tokens

    assert tidy_wordpiece_text(decoded) == tidy
    assert rouge_tokens(tidy) == rouge_tokens(decoded)


def test_bert_summaries_are_written_as_their_references_were(minilm_data) -> None:
    """Decoding the 500 dev summaries' word pieces gives each summary back (lower-cased) for all but a
    few, where BERT's raw decoding gave back 28; ROUGE's words are the same either way."""
    from zoo.tasks.rouge import rouge_tokens

    minilm_data.prepare_data()
    minilm_data.setup("validate")
    references = [r["summary"] for r in _dev_records(500)]
    tokenizer = minilm_data.tokenizer
    same = 0
    for reference in references:
        ids = tokenizer.encode(reference, add_special_tokens=False).ids
        text, raw = minilm_data.decode([CLS, *ids, SEP]), tokenizer.decode(ids)
        same += text.split() == reference.lower().split()
        assert rouge_tokens(text) == rouge_tokens(raw)
    assert same >= 495


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"dialogue": "hi", "summary": ', r":2: invalid JSON"),
        ('{"dialogue": "hi"}', r":2: no key 'summary'; the object has \['dialogue'\]"),
        ('{"dialogue": "hi", "summary": 3}', r":2: field 'summary' must be text, found a int"),
        ('["hi", "there"]', r":2: expected a JSON object, found list"),
        ('{"dialogue": "hi", "summary": "  "}', r":2: empty target line"),
    ],
)
def test_bad_records_are_named_by_file_and_line(tmp_path, line, message) -> None:
    good = json.dumps({"dialogue": "#Person1#: hi.", "summary": "They greet."})
    val = tmp_path / "dev.jsonl"
    val.write_text(f"{good}\n{line}\n{good}\n", encoding="utf-8")
    train = _jsonl(tmp_path / "train.jsonl", [json.loads(good)] * 3)
    data = SummarizationDataModule(train, str(val), cache_dir=str(tmp_path / "cache"), bpe_vocab_size=300)
    with pytest.raises(ValueError, match=f"^{val}{message}"):
        data.prepare_data()


def test_blank_lines_are_not_records(tmp_path) -> None:
    """A blank line (or one of spaces) between records or at the end is skipped, as in every table."""
    good = json.dumps({"dialogue": "#Person1#: hi.", "summary": "They greet."})
    val = tmp_path / "dev.jsonl"
    val.write_text(f"{good}\n\n{good}\n  \n{good}\n\n", encoding="utf-8")
    train = _jsonl(tmp_path / "train.jsonl", [json.loads(good)] * 3)
    data = SummarizationDataModule(train, str(val), cache_dir=str(tmp_path / "cache"), bpe_vocab_size=300)
    data.prepare_data()
    data.setup("validate")
    assert data.stats["val"]["kept"] == 3


def test_tsv_with_named_columns_and_missing_file(tmp_path) -> None:
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("id\tdoc\tsum\n1\tA long text.\tShort.\n2\tAnother text\n", encoding="utf-8")
    data = SummarizationDataModule(
        str(tsv), str(tsv), source_field="doc", target_field="sum", cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(ValueError, match=rf"^{tsv}:3: 2 fields, but the header has 3"):
        data.prepare_data()
    data = SummarizationDataModule(str(tsv), str(tsv), source_field="text", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=rf"^{tsv}:1: no column 'text'; the header has \['id', 'doc', 's"):
        data.prepare_data()
    data = SummarizationDataModule(str(tmp_path / "nope.jsonl"), str(tsv), cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.prepare_data()


def test_the_bpe_tokenizer_is_trained_on_the_fields_read(tmp_path) -> None:
    """Two runs over one file that read different fields get different tokenizers, not the first run's
    cached one: the cache key names the fields."""
    records = [{"a": f"alpha{i} alpha", "b": f"beta{i} beta", "c": f"gamma{i} gamma"} for i in range(30)]
    pairs = _jsonl(tmp_path / "pairs.jsonl", records)

    def vocab(source_field: str, target_field: str) -> set[str]:
        data = SummarizationDataModule(
            pairs,
            pairs,
            source_field=source_field,
            target_field=target_field,
            cache_dir=str(tmp_path / "cache"),
            bpe_vocab_size=300,
        )
        data.prepare_data()
        return set(data.tokenizer.get_vocab())

    first, second = vocab("a", "b"), vocab("a", "c")
    assert "beta" in first and "beta" not in second
    assert "gamma" in second and "gamma" not in first


# -- the shared search's options -------------------------------------------------------------------
class _Repetitive:
    """A `DecoderStep` whose logits strongly prefer tokens 3-5 (not the end token 2), from a seeded draw
    that ignores the tokens fed (so reordering only changes the number of rows)."""

    def __init__(self, rows: int, seed: int) -> None:
        self.rows, self.generator = rows, torch.Generator().manual_seed(seed)

    def _logits(self) -> torch.Tensor:
        logits = torch.randn(self.rows, 12, generator=self.generator)
        logits[:, 3:6] += 6.0
        return logits

    def start(self) -> torch.Tensor:
        return self._logits()

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._logits()

    def reorder(self, index: torch.Tensor) -> None:
        self.rows = len(index)


def _search(step: _Repetitive, ending: Ending, beams: int) -> list:
    if beams > 1:
        return decode_beams(step, ending=ending, beam_size=beams)
    return decode_one(step, ending=ending)


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("beams", [1, 3])
def test_no_repeat_ngram_size_never_repeats_an_ngram(n: int, beams: int) -> None:
    def run(size: int) -> list[list[int]]:
        ending = Ending(
            torch.full((16,), 9), end_ids=(2,), force_end=True, banned_ids=(0, 1), no_repeat_ngram_size=size
        )
        step = _Repetitive(16, seed=n)
        return [h.tokens for h in _search(step, ending, beams)]

    repeated = lambda outputs: sum(len(_ngrams(t, n)) - len(set(_ngrams(t, n))) for t in outputs)
    assert repeated(run(0)) > 0  # without the option these logits do repeat
    assert repeated(run(n)) == 0


def test_block_repeated_ngrams_bans_exactly_the_completing_tokens() -> None:
    history = torch.tensor([[3, 4, 5, 3, 4], [3, 4, 5, 3, 5]])
    blocked = block_repeated_ngrams(torch.zeros(2, 8), history, 3)
    assert blocked[0].isinf().nonzero().flatten().tolist() == [5]  # "3 4" was followed by 5
    assert not blocked[1].isinf().any()  # "3 5" never occurred before
    assert block_repeated_ngrams(torch.zeros(2, 8), history, 2)[1].isinf().nonzero().flatten().tolist() == [3]


@pytest.mark.parametrize("beams", [1, 3])
def test_min_len_is_respected_and_the_limit_still_ends_rows(beams: int) -> None:
    class Eager(_Repetitive):
        def _logits(self) -> torch.Tensor:
            logits = super()._logits()
            logits[:, 2] += 30.0  # the end token, first at every step
            return logits

    def lengths(min_len: int, limit: int) -> list[int]:
        limits = torch.full((8,), limit)
        ending = Ending(limits, end_ids=(2,), force_end=True, banned_ids=(0, 1), min_len=min_len)
        return [len(h.tokens) for h in _search(Eager(8, seed=0), ending, beams)]

    assert lengths(0, 10) == [0] * 8
    assert lengths(4, 10) == [4] * 8  # ends as soon as it may
    assert lengths(12, 6) == [5] * 8  # the forced end at the limit (6 with the end token) wins


def test_summarization_generate_applies_the_options() -> None:
    torch.manual_seed(0)
    backbone = BertEncoderDecoder(vocab_size=40, max_seq_len=32, embed_dim=32, num_heads=4, num_layers=2)
    decoding = Decoding(min_length=6, no_repeat_ngram_size=2, max_new_tokens=20, num_beams=3)
    task = Summarization(backbone, decoding=decoding, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    src = torch.randint(3, 40, (4, 10))
    for num_beams in (1, 3):
        outputs = task.generate(src, num_beams=num_beams)
        assert all(len(o) >= 6 for o in outputs)
        assert all(len(_ngrams(o, 2)) == len(set(_ngrams(o, 2))) for o in outputs)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        Summarization(backbone, decoding=Decoding(no_repeat_ngram_size=-1))


def test_cross_attention_lr_scale_multiplies_only_the_cross_attention_rates() -> None:
    from zoo.models.seq2seq import Transformer
    from zoo.tasks.optim import adamw, build_optimizer

    backbone = BertEncoderDecoder(vocab_size=40, max_seq_len=32, embed_dim=32, num_heads=4, num_layers=2)
    task = Summarization(backbone, optimizer=adamw(lr=1e-3), cross_attention_lr_scale=8.0)
    optimizer = build_optimizer(task.optimizer_spec, task.parameter_groups())
    rate = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert len(rate) == sum(1 for _ in task.parameters())  # every parameter once
    for name, p in backbone.named_parameters():
        fresh = ".cross_attn." in name or ".cross_attn_norm." in name
        assert rate[id(p)] == (8e-3 if fresh else 1e-3, 0.01 if p.dim() >= 2 else 0.0), name
    assert sum(".cross_attn" in name for name, _ in backbone.named_parameters()) == 2 * 8  # 2 layers
    plain = Summarization(backbone, optimizer=adamw(lr=1e-3))
    assert {
        g["lr"] for g in build_optimizer(plain.optimizer_spec, plain.parameter_groups()).param_groups
    } == {1e-3}
    transformer = Transformer(
        vocab_size=40, embed_dim=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1
    )
    groups = Summarization(transformer, cross_attention_lr_scale=2.0).parameter_groups()
    assert [g.get("lr_scale") for g in groups] == [None, 2.0, None, 2.0]
    with pytest.raises(ValueError, match="cross_attention_lr_scale must be a number > 0, got 0"):
        Summarization(backbone, cross_attention_lr_scale=0)


# -- the recipe through the `zoo` command ----------------------------------------------------------
def test_recipe_fits_logs_rouge_and_predicts(tmp_path, minilm_dir) -> None:
    train = _jsonl(tmp_path / "train.jsonl", _dev_records(48)[8:])
    val = _jsonl(tmp_path / "dev.jsonl", _dev_records(8))
    predict = _jsonl(tmp_path / "dialogues.jsonl", [{"dialogue": r["dialogue"]} for r in _dev_records(5)])
    common = [
        "--config", str(RECIPE),
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--data.init_args.train_file={train}",
        f"--data.init_args.val_file={val}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--model.init_args.max_len_b=12",
    ]  # fmt: skip
    main(["fit", *common, "--trainer.max_steps=3", "--trainer.val_check_interval=3"])
    (metrics,) = (tmp_path / "run").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val_rouge1")]
    assert len(rows) == 1 and {"val_rouge2", "val_rougeL", "val_loss"} <= {k for k, v in rows[0].items() if v}
    assert 0.0 <= float(rows[0]["val_rouge1"]) <= 100.0
    main(["predict", *common, "--ckpt_path", "last", f"--data.init_args.predict_file={predict}",
          "--model.init_args.beam_size=2"])  # fmt: skip
    predictions = tmp_path / "run" / "logs" / "version_1" / "predictions.txt"  # fit was version_0
    lines = predictions.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 6 and lines[-1] == ""  # one summary per dialogue, in order
