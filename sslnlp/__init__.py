"""sslnlp: self-supervised pretraining of language models on your own text.

    import sslnlp
    config = sslnlp.load_config(sslnlp.PretrainConfig, "recipes/tiny-cpu.yaml", ["output_dir=runs/tiny"])
    summary = sslnlp.pretrain(config)
"""

from sslnlp.config import (
    DataConfig,
    EvaluateConfig,
    EvaluationConfig,
    FinetuneConfig,
    HubConfig,
    ObjectiveConfig,
    ModelConfig,
    PretrainConfig,
    ProbeConfig,
    TaskConfig,
    TokenizerConfig,
    TrainingConfig,
    load_config,
)
from sslnlp.corpus import Corpus, CorpusError, load_corpus
from sslnlp.masking import CausalLanguageModelingCollator, MaskedLanguageModelingCollator
from sslnlp.objectives import Objective, ObjectiveLoss, build_objective, get_objective, register_objective
from sslnlp.packing import BlockStream, PackedBlocks
from sslnlp.shards import PreparedBlocks, PreparedData, prepare
from sslnlp.tasks import LabelledTask, load_task
from sslnlp.tokenizer import load_tokenizer, train_tokenizer


def pretrain(config):
    """Pretrain a model; see :func:`sslnlp.train.pretrain` (imported lazily: it pulls in accelerate)."""
    from sslnlp.train import pretrain as run

    return run(config)


def probe(config):
    """Linear-probe a checkpoint on labelled tasks; see :func:`sslnlp.probing.probe`."""
    from sslnlp.probing import probe as run

    return run(config)


def finetune(config):
    """Fine-tune a checkpoint on labelled tasks; see :func:`sslnlp.finetuning.finetune`."""
    from sslnlp.finetuning import finetune as run

    return run(config)


def push_to_hub(output_dir, repo_id, **options):
    """Push a finished run (model, tokenizer, metrics, model card) to the Hub; see :func:`sslnlp.hub.push_to_hub`."""
    from sslnlp.hub import push_to_hub as push

    return push(output_dir, repo_id, **options)


def write_report(run_dirs, output_dir=None, **options):
    """An HTML page and PNG charts of one or more runs (needs matplotlib); see :func:`sslnlp.report.write_report`."""
    from sslnlp.report import write_report as write

    return write(run_dirs, output_dir, **options)


__all__ = [
    "BlockStream", "CausalLanguageModelingCollator", "Corpus", "CorpusError", "DataConfig", "EvaluateConfig",
    "EvaluationConfig", "FinetuneConfig", "HubConfig", "LabelledTask", "MaskedLanguageModelingCollator", "Objective", "ObjectiveConfig", "ObjectiveLoss",
    "ModelConfig", "PackedBlocks", "PreparedBlocks", "PreparedData", "PretrainConfig", "ProbeConfig", "TaskConfig", "TokenizerConfig", "TrainingConfig",
    "build_objective", "finetune", "get_objective", "load_config", "load_corpus", "load_task", "load_tokenizer", "prepare", "pretrain", "probe",
    "push_to_hub", "register_objective", "train_tokenizer", "write_report",
]
__version__ = "0.1.0"
