"""The sharded engines' set-up that Accelerate does not do right for sslnlp's models: called once in
``train.set_up`` on the model(s), before the optimizer is built and before ``accelerator.prepare``.

    accelerate launch --config_file recipes/accelerate/fsdp-8gpu.yaml -m sslnlp pretrain recipes/modernbert-base.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/fsdp-cpu-2proc.yaml \
      -m sslnlp pretrain recipes/tiny-cpu.yaml output_dir=runs/tiny-fsdp        # a CPU rehearsal (runtime.py)

FSDP2: sslnlp shards by hand, each transformer layer in its own group, then the root. Accelerate's own FSDP2
auto-wrap (accelerate 1.15, ``fsdp2_prepare_model``) fails on models whose output layer is tied to the input
embeddings, i.e. every masked-LM sslnlp trains: wrapping the embedding module (it is in BERT's
``_no_split_modules``) fails with "Invariant encountered: value was None", wrapping only the layers with
"Parameter 'cls.predictions.decoder.bias' is shared with a parameter already managed by another FSDP group".
Sharding the layers alone leaves everything else (embeddings, tied heads, ELECTRA's shared embeddings, poolers) in
the root group, where a tied parameter is one parameter. Accelerate then takes the sharded model as it is
(``fsdp2_prepare_model`` returns an ``FSDPModule`` unchanged) and only maps the optimizer onto its parameters.

DeepSpeed: ``accelerator.prepare`` sizes DeepSpeed's batch from the dataloaders it is given; sslnlp gives none (its
data stream is its own), so the micro-batch size is filled in here from the training config.
"""

from __future__ import annotations

import torch

from sslnlp.runtime import TrainingError


def transformer_layers(model: torch.nn.Module, class_names=None) -> list[torch.nn.Module]:
    """The transformer layers of ``model`` (a Hugging Face model or a wrapper of several): the modules whose class
    is named in a model's ``_no_split_modules`` (or in ``class_names``) and that sit in an ``nn.ModuleList``, the
    stack of layers. The list condition keeps out the embedding modules that some models also name there (BERT's
    BertEmbeddings); BertLayer, RobertaLayer, ModernBertEncoderLayer, GPT2Block, LlamaDecoderLayer qualify."""
    names = set(class_names or [])
    if not names:
        for module in model.modules():
            names.update(getattr(module, "_no_split_modules", None) or [])
    layers, seen = [], set()
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            for child in module:
                if type(child).__name__ in names and id(child) not in seen:
                    seen.add(id(child))
                    layers.append(child)
    return layers


def shared_submodule(model: torch.nn.Module) -> str | None:
    """The name of a module that two parents hold (a module shared between two models), or None."""
    parents: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in parents and parents[id(module)] != name and module is not model:
            if name.rsplit(".", 1)[0] != parents[id(module)].rsplit(".", 1)[0]:
                return parents[id(module)]
        parents.setdefault(id(module), name)
    return None


def shard_fsdp2(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2 as the launch config's plugin asks (mixed precision, resharding after
    forward, offload): every transformer layer, then the root. Returns the model (now an ``FSDPModule``)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise TrainingError(f"the launch config asks for FSDP version {plugin.fsdp_version}; sslnlp shards with FSDP2: "
                            "set fsdp_config.fsdp_version: 2 (recipes/accelerate/fsdp-8gpu.yaml)")
    if plugin.activation_checkpointing:
        raise TrainingError("fsdp_config.fsdp_activation_checkpointing is not supported by sslnlp's FSDP2 sharding "
                            "(Accelerate would wrap layers already sharded); set it to false")
    if isinstance(model, FSDPModule):
        return model
    shared = shared_submodule(model)
    if shared:
        raise TrainingError(f"FSDP cannot shard {type(model).__name__}: its module {shared} is shared by two models "
                            "(ELECTRA's generator and discriminator share their embeddings; measured: the ranks hang); "
                            "train it with data parallel (recipes/accelerate/cpu-2proc.yaml, ddp-8gpu.yaml)")
    layers = transformer_layers(model, plugin.transformer_cls_names_to_wrap)
    if not layers:
        raise TrainingError(f"FSDP found no transformer layers to shard in {type(model).__name__} (no module in an "
                            "nn.ModuleList whose class is in _no_split_modules); name the layer class with "
                            "fsdp_config.fsdp_transformer_layer_cls_to_wrap, or use data parallel")
    if accelerator.mixed_precision != "no":  # one dtype per group: fp32 master weights, the policy casts for compute
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    options = {"mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(), "offload_policy": plugin.cpu_offload}
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None:
        options["mesh"] = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    for layer in layers:
        fully_shard(layer, reshard_after_forward=plugin.reshard_after_forward, **options)
    fully_shard(model, **options)  # the root: torch's default keeps it gathered from forward to backward
    # accelerator.prepare calls plugin.set_auto_wrap_policy(model) first, which looks the layer classes up by name and
    # fails on the sharded classes (FSDPBertLayer); nothing is left to wrap anyway.
    plugin.auto_wrap_policy = None
    return model


def set_deepspeed_batch_size(accelerator, per_device_train_batch_size: int, gradient_accumulation_steps: int) -> None:
    """Fill DeepSpeed's micro-batch size (``train_micro_batch_size_per_gpu: auto``) from the training config, the
    supported way (``deepspeed_plugin.deepspeed_config``); Accelerate derives ``train_batch_size`` from it."""
    plugin = accelerator.state.deepspeed_plugin
    if gradient_accumulation_steps != 1:  # DeepSpeed steps inside every accelerator.backward (its own accumulation: 1)
        raise TrainingError(f"training.gradient_accumulation_steps={gradient_accumulation_steps} under DeepSpeed: "
                            "DeepSpeed steps at every backward here; set it to 1 and raise "
                            "training.per_device_train_batch_size instead (recipes/accelerate/deepspeed-zero2-8gpu.yaml)")
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = per_device_train_batch_size


def prepare_engine(accelerator, model: torch.nn.Module, training) -> torch.nn.Module:
    """What the launch's engine needs before the optimizer and ``accelerator.prepare``: FSDP2 sharding, DeepSpeed's
    batch size; nothing for data parallel or one process.

    Args:
        accelerator: the run's Accelerator (``runtime.make_accelerator``).
        model: the objective's model, one module (ELECTRA's generator and discriminator, SimCSE's wrapper included).
        training: the TrainingConfig (batch size and accumulation, for DeepSpeed).
    """
    engine = accelerator.distributed_type.name
    if engine == "FSDP":
        return shard_fsdp2(accelerator, model)
    if engine == "DEEPSPEED":
        set_deepspeed_batch_size(accelerator, training.per_device_train_batch_size, training.gradient_accumulation_steps)
    return model
