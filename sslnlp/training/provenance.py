"""What a run records to be reproduced and compared: package versions and fingerprints of the resolved config, the
tokenizer and the training data actually read. Written to summary.json (and the model card); kept in every
checkpoint, and a resume whose data or tokenizer changed underneath it is refused, naming what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata

PACKAGES = ("sslnlp", "torch", "transformers", "tokenizers", "accelerate", "datasets")
# Settings that do not change what is trained: left out of the config fingerprint.
NOT_FINGERPRINTED = {"output_dir", "hub"}
NOT_FINGERPRINTED_TRAINING = {"resume_from_checkpoint", "report_to", "logging_steps", "save_steps", "save_total_limit"}


class ProvenanceError(ValueError):
    """A resume over changed data or tokenizer: one line naming what changed and what to do."""


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_of(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def run_provenance(config_values: dict, tokenizer, train_corpus) -> dict:
    """{versions, config_sha256, tokenizer_sha256, data_sha256, data} of a run.

    Args:
        config_values: the resolved config as plain data (what config.yaml holds).
        tokenizer: the run's tokenizer (its tokenizer.json content is hashed).
        train_corpus: the training corpus (its ``fingerprint()``: files with sizes and modification times, a hash of
            in-memory texts, a Hub dataset's name).
    """
    kept = {k: v for k, v in config_values.items() if k not in NOT_FINGERPRINTED}
    kept["training"] = {k: v for k, v in kept.get("training", {}).items() if k not in NOT_FINGERPRINTED_TRAINING}
    data = train_corpus.fingerprint()
    return {"versions": package_versions(), "config_sha256": sha256_of(kept),
            "tokenizer_sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
            "data_sha256": sha256_of(data), "data": data}


def files_of(data: dict) -> dict:
    """file name -> size of every file in a data fingerprint (nested wrappers included). Names, not paths, and sizes,
    not modification times: data copied or moved to another machine still resumes; appended, truncated, added or
    removed files do not (an edit that keeps a file's size is not caught)."""
    found = {}
    if data.get("kind") == "files":
        found.update({os.path.basename(path): size for path, size, _ in data["files"]})
    for child in [data.get("source")] + list(data.get("sources") or []):
        if isinstance(child, dict):
            found.update(files_of(child))
    return found


def without_files(data):
    """The fingerprint with its file entries left out (what must match exactly besides the files)."""
    if isinstance(data, dict):
        return {k: without_files(v) for k, v in data.items() if k != "files"}
    if isinstance(data, list):
        return [without_files(v) for v in data]
    return data


def check_resume(saved: dict | None, now: dict, checkpoint) -> None:
    """Refuse to resume when the training data or the tokenizer differ from the checkpoint's run."""
    if not saved:
        return  # a checkpoint written before runs recorded their provenance
    advice = "resume with the original data and tokenizer, or start a new output_dir"
    if saved.get("tokenizer_sha256") != now["tokenizer_sha256"]:
        raise ProvenanceError(f"cannot resume from {checkpoint}: the tokenizer differs from the one the run was trained "
                              f"with (sha256 {str(saved.get('tokenizer_sha256'))[:12]} -> {now['tokenizer_sha256'][:12]}); "
                              + advice)
    before, after = files_of(saved.get("data") or {}), files_of(now["data"])
    changes = [f"{name} added" for name in after if name not in before]
    changes += [f"{name} removed" for name in before if name not in after]
    changes += [f"{name} changed size ({before[name]} -> {after[name]} bytes)" for name in after
                if name in before and before[name] != after[name]]
    if not changes and without_files(saved.get("data")) != without_files(now["data"]):
        changes = ["the training text itself (a different in-memory corpus, Hub dataset or mixture)"]
    if changes:
        raise ProvenanceError(f"cannot resume from {checkpoint}: the training data changed: {'; '.join(changes[:3])}; "
                              + advice)
