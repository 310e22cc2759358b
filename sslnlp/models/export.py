"""A trained model written as a Hugging Face directory (safetensors + config + tokenizer) that the Auto classes and
pipelines load, from one process or gathered from FSDP's shards."""

from __future__ import annotations

import os
from pathlib import Path


def without_tied_aliases(module, state_dict: dict) -> dict:
    """``state_dict`` without the second names of tied parameters (an MLM decoder tied to the word embeddings).
    save_pretrained drops them by seeing shared storage; FSDP's gathered state dict holds separate copies, so they
    would be written twice."""
    aliases = ({name for name, _ in module.named_parameters(remove_duplicate=False)}
               - {name for name, _ in module.named_parameters()})
    return {key: value for key, value in state_dict.items() if key not in aliases}


def export_model(accelerator, model, tokenizer, output_dir: str | os.PathLike | Path) -> None:
    """Write the model (safetensors + config) and tokenizer so the Auto classes and pipelines load ``output_dir``.
    Call on every rank: under FSDP ``get_state_dict`` gathers the full, unsharded weights (a collective); only the
    main process writes."""
    unwrapped = accelerator.unwrap_model(model)
    state_dict = without_tied_aliases(unwrapped, accelerator.get_state_dict(model))
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
