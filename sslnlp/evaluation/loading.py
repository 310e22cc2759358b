"""What the linear probe (probing.py) and fine-tuning (finetuning.py) both load from a checkpoint: its transformers
config and tokenizer, a random-weight twin of its architecture (the floor) and its identity (cached features follow
retraining).
"""

from __future__ import annotations

import json
from pathlib import Path

from sslnlp.config import EvaluateConfig


class QuietLoading:
    """Silences transformers' load report while a checkpoint loads into another head: the MLM head's weights are
    unused and the classifier's are new, by design; one line of ours says so instead."""

    def __enter__(self):
        import transformers

        self.verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()

    def __exit__(self, *exc):
        import transformers

        transformers.logging.set_verbosity(self.verbosity)


def load_pretrained(auto_class, config: EvaluateConfig, model_config, **kwargs):
    """``auto_class`` (the encoder, or it under a new classification head: ``model_config``) from the checkpoint's
    weights, quietly; refused in one line when the checkpoint's names are not the ones it reads
    (``refuse_unread_checkpoint``), where transformers would only warn and score random weights."""
    from sslnlp.models.modeling import refuse_unread_checkpoint

    with QuietLoading():
        model, loading = auto_class.from_pretrained(config.model_name_or_path, config=model_config,
                                                    output_loading_info=True,
                                                    trust_remote_code=config.trust_remote_code, **kwargs)
    refuse_unread_checkpoint(model, loading, "model_name_or_path", config.model_name_or_path)
    return model


def load_model_config(config: EvaluateConfig):
    """The checkpoint's transformers config; a one-line ModelError when ``model_name_or_path`` is not a model."""
    from transformers import AutoConfig

    from sslnlp.models.modeling import ModelError

    try:
        return AutoConfig.from_pretrained(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelError(f"model_name_or_path={config.model_name_or_path!r} is not a loadable model ({reason}); give a "
                         "directory with config.json (e.g. runs/tiny-cpu after `sslnlp pretrain recipes/tiny-cpu.yaml`) "
                         "or a Hub name (needs network)") from None


def load_checkpoint_tokenizer(config: EvaluateConfig):
    """``tokenizer_name_or_path``'s tokenizer, else the checkpoint's own."""
    from sslnlp.data.tokenizer import load_tokenizer

    return load_tokenizer(config.tokenizer_name_or_path or config.model_name_or_path,
                          trust_remote_code=config.trust_remote_code)


def checkpoint_identity(config: EvaluateConfig) -> str:
    """The checkpoint's name plus the size and time of its weight files: cached features follow retraining."""
    path = Path(config.model_name_or_path).expanduser()
    if not path.is_dir():
        return config.model_name_or_path
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return json.dumps([str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def random_twin(model_config, seed: int, auto_class):
    """The same architecture with random weights, drawn from ``seed``."""
    from accelerate.utils import set_seed

    set_seed(seed)
    return auto_class.from_config(model_config)
