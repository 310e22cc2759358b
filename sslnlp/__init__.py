"""sslnlp: self-supervised pretraining of language models on your own text.

    import sslnlp
    config = sslnlp.load_config(sslnlp.PretrainConfig, "recipes/tiny-cpu.yaml", ["output_dir=runs/tiny"])
    summary = sslnlp.pretrain(config)
"""

from sslnlp.config import (
    DataConfig,
    EvaluateConfig,
    HubConfig,
    ObjectiveConfig,
    ModelConfig,
    PretrainConfig,
    PretrainEvaluationConfig,
    TaskConfig,
    TokenizerConfig,
    TrainingConfig,
    load_config,
)
from sslnlp.data.corpus import Corpus, CorpusError, load_corpus
from sslnlp.data.masking import CausalLanguageModelingCollator, MaskedLanguageModelingCollator
from sslnlp.objectives import Objective, ObjectiveLoss, build_objective, get_objective, register_objective
from sslnlp.data.blocks import BlockSource, BlockStream
from sslnlp.data.packing import BlockLayout, PackedBlocks
from sslnlp.data.prepared import PreparedBlocks, PreparedData
from sslnlp.data.segments import SegmentBlocks, SegmentLayout
from sslnlp.evaluation.tasks import LabelledTask, load_task
from sslnlp.data.tokenizer import load_tokenizer, train_tokenizer


def pretrain(config):
    """Pretrain a model; see :func:`sslnlp.training.loop.pretrain` (imported lazily: it pulls in accelerate)."""
    from sslnlp.training.loop import pretrain as run

    return run(config)


def prepare(config, output_dir, **options):
    """Tokenize and pack a pretraining config's corpus once into Arrow shards, in the layout its objective reads;
    see :func:`sslnlp.data.prepare.prepare_blocks` (``num_proc``, ``shard_tokens``). Returns the manifest."""
    from sslnlp.data.prepare import prepare_blocks

    return prepare_blocks(config, output_dir, objective=build_objective(config.objective, config.model), **options)


def probe(config):
    """Linear-probe a checkpoint on labelled tasks; see :func:`sslnlp.evaluation.probing.probe`."""
    from sslnlp.evaluation.probing import probe as run

    return run(config)


def finetune(config):
    """Fine-tune a checkpoint on labelled tasks; see :func:`sslnlp.evaluation.finetuning.finetune`."""
    from sslnlp.evaluation.finetuning import finetune as run

    return run(config)


def push_to_hub(output_dir, repo_id, **options):
    """Push a finished run (model, tokenizer, metrics, model card) to the Hub; see :func:`sslnlp.publishing.hub.push_to_hub`."""
    from sslnlp.publishing.hub import push_to_hub as push

    return push(output_dir, repo_id, **options)


def write_report(run_dirs, output_dir=None, **options):
    """An HTML page and PNG charts of one or more runs (needs matplotlib); see :func:`sslnlp.publishing.report.write_report`."""
    from sslnlp.publishing.report import write_report as write

    return write(run_dirs, output_dir, **options)


__all__ = [
    "BlockLayout", "BlockSource", "BlockStream", "CausalLanguageModelingCollator", "Corpus", "CorpusError", "DataConfig", "EvaluateConfig",
    "PretrainEvaluationConfig", "HubConfig", "LabelledTask", "MaskedLanguageModelingCollator", "Objective", "ObjectiveConfig", "ObjectiveLoss",
    "ModelConfig", "PackedBlocks", "PreparedBlocks", "PreparedData", "PretrainConfig", "SegmentBlocks", "SegmentLayout", "TaskConfig", "TokenizerConfig", "TrainingConfig",
    "build_objective", "finetune", "get_objective", "load_config", "load_corpus", "load_task", "load_tokenizer", "prepare", "pretrain", "probe",
    "push_to_hub", "register_objective", "train_tokenizer", "write_report",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Old names (ProbeConfig, FinetuneConfig, EvaluationConfig) keep working, with a deprecation warning."""
    from sslnlp.config import RENAMED_CLASSES, renamed_class

    if name in RENAMED_CLASSES:
        return renamed_class(name)
    raise AttributeError(f"module 'sslnlp' has no attribute {name!r}")
