"""sslnlp: self-supervised pretraining of language models on your own text.

    import sslnlp
    config = sslnlp.load_config(sslnlp.PretrainConfig, "recipes/tiny-cpu.yaml", ["output_dir=runs/tiny"])
    summary = sslnlp.pretrain(config)
"""

from sslnlp.config import (
    DataConfig,
    EvaluationConfig,
    MaskingConfig,
    ModelConfig,
    PretrainConfig,
    TokenizerConfig,
    TrainingConfig,
    load_config,
)
from sslnlp.corpus import Corpus, CorpusError, load_corpus
from sslnlp.masking import CausalLanguageModelingCollator, MaskedLanguageModelingCollator, build_collator
from sslnlp.packing import BlockStream, PackedBlocks
from sslnlp.tokenizer import load_tokenizer, train_tokenizer


def pretrain(config):
    """Pretrain a model; see :func:`sslnlp.train.pretrain` (imported lazily: it pulls in accelerate)."""
    from sslnlp.train import pretrain as run

    return run(config)


__all__ = [
    "BlockStream", "CausalLanguageModelingCollator", "Corpus", "CorpusError", "DataConfig", "EvaluationConfig",
    "MaskedLanguageModelingCollator", "MaskingConfig", "ModelConfig", "PackedBlocks", "PretrainConfig",
    "TokenizerConfig", "TrainingConfig", "build_collator", "load_config", "load_corpus", "load_tokenizer", "pretrain",
    "train_tokenizer",
]
__version__ = "0.1.0"
