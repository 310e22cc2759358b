"""Same recipe and seed, same model: two fresh processes that each train their own tokenizer (every kind) end with
byte-identical tokenizer.json and weights (CPU). tokenizers' WordPiece and Unigram trainers are not deterministic
across processes (huggingface/tokenizers#1794); sslnlp.data.tokenizer works around them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fresh_process_arguments(output_dir: Path, corpus_file: str, kind: str, encoder: bool = True) -> tuple[list, dict]:
    model = ("model.model_type=bert", "model.config_overrides={hidden_size: 32, num_hidden_layers: 1, "
             "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 64}", "objective.name=mlm") \
        if encoder else ("model.model_type=gpt2", "model.config_overrides={n_embd: 32, n_layer: 1, n_head: 2, "
                         "n_positions: 64}", "objective.name=clm")
    arguments = [sys.executable, "-m", "sslnlp", "pretrain", f"output_dir={output_dir}", f"data.train_files={corpus_file}",
                 f"tokenizer.kind={kind}", "tokenizer.vocab_size=384", "data.max_seq_length=32",
                 "training.per_device_train_batch_size=8", "training.max_steps=8", "training.mixed_precision=no",
                 "data.shuffle_buffer_size=16", *model]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    environment.pop("PYTHONHASHSEED", None)  # each process gets its own hash seed, as a user's would
    return arguments, environment


def run_in_fresh_process(output_dir: Path, corpus_file: str, kind: str, encoder: bool = True, *extra: str) -> None:
    arguments, environment = fresh_process_arguments(output_dir, corpus_file, kind, encoder)
    result = subprocess.run(arguments + list(extra), cwd=REPO, env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("kind,encoder", [("wordpiece", True), ("bpe", False), ("unigram", True)])
def test_two_fresh_runs_train_the_same_tokenizer_and_model(kind, encoder, tmp_path):
    import textgen

    corpus = tmp_path / "corpus.jsonl"
    # varied synthetic text: many equally frequent pairs, where the library's own trainers broke ties at random
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in textgen.documents(400, seed=5)))
    for name in ("first", "second"):
        run_in_fresh_process(tmp_path / name, str(corpus), kind, encoder)
    for file in ("tokenizer/tokenizer.json", "model.safetensors"):
        assert (tmp_path / "first" / file).read_bytes() == (tmp_path / "second" / file).read_bytes(), file


def test_a_run_killed_while_training_its_tokenizer_resumes_into_the_uninterrupted_model(tmp_path):
    """SIGKILL during tokenizer training, before any checkpoint; `resume_from_checkpoint=auto` then trains the model
    the uninterrupted run trained, bit for bit (no half-written tokenizer is left to load)."""
    import signal
    import time

    import textgen

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in textgen.documents(30000, seed=6)))
    run_in_fresh_process(tmp_path / "uninterrupted", str(corpus), "wordpiece", True, "tokenizer.training_documents=30000")
    arguments, environment = fresh_process_arguments(tmp_path / "killed", str(corpus), "wordpiece")
    process = subprocess.Popen(arguments + ["tokenizer.training_documents=30000"], cwd=REPO, env=environment,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:  # the kill lands while the tokenizer trainer reads and counts the documents
        lines.append(line)
        if "tokenizer (vocabulary" in line:
            time.sleep(0.3)
            process.send_signal(signal.SIGKILL)
            break
    assert process.wait(timeout=60) == -signal.SIGKILL, "".join(lines)[-2000:]
    assert not (tmp_path / "killed" / "tokenizer").exists() and not (tmp_path / "killed" / "checkpoints").exists()
    run_in_fresh_process(tmp_path / "killed", str(corpus), "wordpiece", True, "tokenizer.training_documents=30000",
                         "training.resume_from_checkpoint=auto")
    for file in ("tokenizer/tokenizer.json", "model.safetensors"):
        assert (tmp_path / "uninterrupted" / file).read_bytes() == (tmp_path / "killed" / file).read_bytes(), file


CORPUS_FORMS = ["list", "function", "paths", "dataset", "saved_dataset", "iterable_dataset"]


def corpus_form(form: str, texts: list[str], directory: Path):
    """``texts`` in one of the forms the README's `pretrain(data.train_files=...)` accepts."""
    import datasets

    if form == "list":
        return list(texts)
    if form == "function":  # the README's `lambda: (text for text in ...)`: a new generator on each call
        return lambda: (text for text in texts)
    if form == "paths":
        half = len(texts) // 2
        for name, part in (("a.jsonl", texts[:half]), ("b.txt", texts[half:])):
            (directory / name).write_text("".join((json.dumps({"text": t}) if name.endswith(".jsonl") else t) + "\n"
                                                  for t in part))
        return [str(directory / "a.jsonl"), str(directory / "b.txt")]
    dataset = datasets.Dataset.from_dict({"text": texts})
    if form == "saved_dataset":
        dataset.save_to_disk(str(directory / "saved"))
        return str(directory / "saved")
    if form == "iterable_dataset":
        return datasets.IterableDataset.from_generator(lambda: ({"text": text} for text in texts))
    return dataset


@pytest.mark.parametrize("form", CORPUS_FORMS)
def test_every_corpus_form_serves_holdout_epochs_and_resume(form, wordpiece_dir, tmp_path):
    """Each corpus form through pretrain(): the validation hold-out, three epochs, and a resume from a mid-run
    checkpoint that ends with the uninterrupted run's weights. (A function returning a generator used to fail on the
    second read: 'a generator can be read only once'.)"""
    import shutil

    import textgen
    from conftest import tiny_overrides

    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.training.loop import pretrain

    texts = textgen.documents(60, seed=3)  # ~10 steps an epoch at 8 blocks of 32 tokens: 30 steps see 3 epochs

    def run(output_dir, **extra):
        config = load_config(PretrainConfig, None, tiny_overrides(output_dir, wordpiece_dir, steps=30, **{
            "training.save_steps": 10, "training.save_total_limit": 5, **extra}))
        config.data.train_files = corpus_form(form, texts, tmp_path)
        return pretrain(config)

    full = run(tmp_path / "full")
    assert full["steps"] == 30 and full["eval_loss"] > 0  # validation_holdout_every=10 held out from the same source
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["epochs"] >= 2
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000010",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-00000010")
    run(tmp_path / "resumed", **{"training.resume_from_checkpoint": "auto"})
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "resumed" / "model.safetensors").read_bytes()


def test_a_hub_dataset_streams_into_a_run_with_holdout_and_resume(wordpiece_dir, tmp_path):
    """A Hub dataset name: `datasets` streams it from the local Hub server (HF_ENDPOINT), through the CLI as a user
    runs it; the hold-out, epochs and a resume work as for local files."""
    import shutil

    import textgen
    from conftest import tiny_overrides
    from hub_server import HubServer

    texts = textgen.documents(60, seed=3)
    with HubServer() as hub:
        hub.add_dataset("me/tiny-text", {"data/train.jsonl": "".join(json.dumps({"text": t}) + "\n" for t in texts).encode(),
                                         "README.md": b"# tiny text\n"})
        environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                       "HF_HOME": str(tmp_path / "hf-home")}

        def run(output_dir, *extra):
            arguments = [sys.executable, "-m", "sslnlp", "pretrain", *tiny_overrides(output_dir, wordpiece_dir, steps=30),
                         "data.train_files=me/tiny-text", "training.save_steps=10", "training.save_total_limit=5", *extra]
            result = subprocess.run(arguments, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]

        run(tmp_path / "full")
        (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
        shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000010",
                        tmp_path / "resumed" / "checkpoints" / "checkpoint-00000010")
        run(tmp_path / "resumed", "training.resume_from_checkpoint=auto")
        downloads = [r for r in hub.requests if r["path"].endswith("/data/train.jsonl") and r["method"] == "GET"]
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["eval_loss"] > 0 and summary["epochs"] >= 2
    assert len(downloads) >= 4  # read again for the hold-out, each epoch and the resume, not from a local copy
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "resumed" / "model.safetensors").read_bytes()


def test_a_one_shot_generator_trains_where_one_pass_suffices_and_is_refused_early_otherwise(wordpiece_dir, tmp_path):
    import textgen
    from conftest import tiny_overrides

    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.data.corpus import CorpusError
    from sslnlp.training.loop import pretrain

    texts, validation = textgen.documents(200, seed=7), tmp_path / "validation.txt"
    validation.write_text("\n".join(textgen.documents(20, seed=8)) + "\n")

    def config(output_dir, **extra):
        loaded = load_config(PretrainConfig, None, tiny_overrides(output_dir, wordpiece_dir, steps=10, **extra))
        loaded.data.train_files = (text for text in texts)  # a one-shot generator
        return loaded

    summary = pretrain(config(tmp_path / "one-pass", **{"data.validation_files": str(validation)}))
    assert summary["steps"] == 10 and summary["eval_loss"] > 0
    with pytest.raises(CorpusError, match=r"one-shot generator, read once, but this run would read it again for the "
                                          r"validation hold-out .*; pass a list, files, a dataset or a function"):
        pretrain(config(tmp_path / "hold-out"))  # validation_holdout_every=10: a second pass
    assert not (tmp_path / "hold-out" / "checkpoints").exists()
    without_tokenizer = config(tmp_path / "tokenizer", **{"data.validation_files": str(validation)})
    without_tokenizer.tokenizer.tokenizer_name_or_path = None
    with pytest.raises(CorpusError, match=r"read it again to train the tokenizer"):
        pretrain(without_tokenizer)
    assert not (tmp_path / "tokenizer" / "tokenizer").exists()


def test_a_run_records_its_provenance_and_refuses_to_resume_over_changed_data(wordpiece_dir, tmp_path):
    import textgen
    from conftest import tiny_overrides

    from sslnlp.publishing.card import write_model_card
    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.training.provenance import ProvenanceError
    from sslnlp.training.loop import pretrain

    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in textgen.documents(200, seed=4)))

    def run(steps, **extra):
        return pretrain(load_config(PretrainConfig, None, tiny_overrides(tmp_path / "run", wordpiece_dir, steps=steps, **{
            "data.train_files": str(corpus), "training.save_steps": 5, **extra})))

    summary = run(10)
    provenance = summary["provenance"]
    assert set(provenance["versions"]) == {"sslnlp", "torch", "transformers", "tokenizers", "accelerate", "datasets"}
    assert provenance["data"]["source"]["files"][0][:2] == [str(corpus), corpus.stat().st_size]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["provenance"]["data_sha256"] == provenance["data_sha256"]
    card = write_model_card(tmp_path / "run", repo_id="me/x")
    assert f"| tokenizer sha256 | `{provenance['tokenizer_sha256'][:16]}`" in card
    resumed = run(12, **{"training.resume_from_checkpoint": "auto"})  # unchanged data: resumes
    assert resumed["steps"] == 12 and resumed["provenance"]["data_sha256"] == provenance["data_sha256"]
    with open(corpus, "a") as handle:  # the data grows under the run
        handle.write(json.dumps({"text": "A new document appended after the checkpoint."}) + "\n")
    with pytest.raises(ProvenanceError, match=r"the training data changed: train.jsonl changed size \(\d+ -> \d+ bytes\)"):
        run(14, **{"training.resume_from_checkpoint": "auto"})


@pytest.mark.parametrize("objective", ["mlm", "electra"])
def test_the_deterministic_switch_runs_every_cpu_op_and_changes_no_bit(objective, corpus_file, wordpiece_dir, tmp_path):
    """training.deterministic=true (torch.use_deterministic_algorithms) finds a deterministic kernel for every op
    of a run (sparse head, ELECTRA's sampling) and, CPUs being deterministic already, ends with the same weights."""
    import torch
    from conftest import tiny_overrides

    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.training.loop import pretrain

    from test_electra import ELECTRA

    def run(name, *extra):
        pretrain(load_config(PretrainConfig, None, tiny_overrides(
            tmp_path / name, wordpiece_dir, steps=6, **{"data.train_files": corpus_file,
                                                        **(ELECTRA if objective == "electra" else {})}) + list(extra)))
        return (tmp_path / name / "model.safetensors").read_bytes()

    try:
        assert run("deterministic", "training.deterministic=true") == run("default")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
