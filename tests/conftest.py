import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import textgen  # noqa: E402

SHARED_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return textgen.documents(300, seed=0)


@pytest.fixture(scope="session")
def wordpiece_tokenizer(documents, tmp_path_factory):
    from sslnlp.tokenizer import train_tokenizer

    return train_tokenizer(documents, tmp_path_factory.mktemp("wordpiece"), kind="wordpiece", objective="mlm", vocab_size=128)


@pytest.fixture(scope="session")
def bpe_tokenizer(documents, tmp_path_factory):
    from sslnlp.tokenizer import train_tokenizer

    return train_tokenizer(documents, tmp_path_factory.mktemp("bpe"), kind="bpe", objective="clm", vocab_size=320)
