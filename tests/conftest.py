import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
# One thread: on a shared 2-core machine two contending torch threads made tiny steps up to 60x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))

import textgen  # noqa: E402

# The launcher installed beside this interpreter: tests pass whether or not the virtual environment is activated.
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
SHARED_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return textgen.documents(300, seed=0)


@pytest.fixture(scope="session")
def wordpiece_tokenizer(documents, tmp_path_factory):
    from sslnlp.data.tokenizer import train_tokenizer

    return train_tokenizer(documents, tmp_path_factory.mktemp("wordpiece"), kind="wordpiece", encoder=True, vocab_size=512)


@pytest.fixture(scope="session")
def bpe_tokenizer(documents, tmp_path_factory):
    from sslnlp.data.tokenizer import train_tokenizer

    return train_tokenizer(documents, tmp_path_factory.mktemp("bpe"), kind="bpe", encoder=False, vocab_size=320)


@pytest.fixture(scope="session")
def corpus_file(documents, tmp_path_factory) -> str:
    import json

    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in textgen.documents(600, seed=1)))
    return str(path)


@pytest.fixture(scope="session")
def wordpiece_dir(wordpiece_tokenizer, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("wordpiece-saved")
    wordpiece_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def bpe_dir(bpe_tokenizer, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bpe-saved")
    bpe_tokenizer.save_pretrained(path)
    return str(path)


def tiny_overrides(output_dir, tokenizer_dir, objective="mlm", steps=30, **extra) -> list[str]:
    """Dotted overrides for a tiny, fast pretraining run on the test corpus."""
    if objective == "mlm":
        model = ["model.model_type=bert", "model.config_overrides={hidden_size: 32, num_hidden_layers: 2, "
                 "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 64}"]
    else:
        model = ["model.model_type=gpt2", "model.config_overrides={n_embd: 32, n_layer: 2, n_head: 2, n_positions: 64}"]
    values = [f"output_dir={output_dir}", f"tokenizer.tokenizer_name_or_path={tokenizer_dir}",
              f"objective.name={objective}", "data.max_seq_length=32", "data.shuffle_buffer_size=64",
              "data.validation_holdout_every=10", "training.per_device_train_batch_size=8", f"training.max_steps={steps}",
              "training.learning_rate=3e-3", "training.warmup_ratio=0.1", "training.logging_steps=1",
              "evaluation.eval_blocks=32", "evaluation.per_device_eval_batch_size=16", *model]
    return values + [f"{k}={v}" for k, v in extra.items()]
