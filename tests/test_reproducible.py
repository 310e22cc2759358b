"""Same recipe and seed, same model: two fresh processes that each train their own tokenizer (every kind) end with
byte-identical tokenizer.json and weights (CPU). tokenizers' WordPiece and Unigram trainers are not deterministic
across processes (huggingface/tokenizers#1794); sslnlp.tokenizer works around them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_in_fresh_process(output_dir: Path, corpus_file: str, kind: str, encoder: bool = True) -> None:
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
    result = subprocess.run(arguments, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
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


def test_a_function_returning_a_generator_serves_holdout_epochs_and_resume(wordpiece_dir, tmp_path):
    """The README's corpus form `lambda: (text for text in ...)`: read again for the hold-out, each epoch and a
    resume (it used to fail on the second read: 'a generator can be read only once')."""
    import shutil

    import textgen
    from conftest import tiny_overrides

    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.train import pretrain

    texts = textgen.documents(60, seed=3)  # ~10 steps an epoch at 8 blocks of 32 tokens: 30 steps see 3 epochs

    def run(output_dir, **extra):
        config = load_config(PretrainConfig, None, tiny_overrides(output_dir, wordpiece_dir, steps=30, **{
            "training.save_steps": 10, "training.save_total_limit": 5, **extra}))
        config.data.train_files = lambda: (text for text in texts)
        return pretrain(config)

    full = run(tmp_path / "full")
    assert full["steps"] == 30 and full["eval_loss"] > 0  # validation_holdout_every=10 held out from the same function
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000010",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-00000010")
    run(tmp_path / "resumed", **{"training.resume_from_checkpoint": "auto"})
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "resumed" / "model.safetensors").read_bytes()


def test_a_run_records_its_provenance_and_refuses_to_resume_over_changed_data(wordpiece_dir, tmp_path):
    import textgen
    from conftest import tiny_overrides

    from sslnlp.card import write_model_card
    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.provenance import ProvenanceError
    from sslnlp.train import pretrain

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
