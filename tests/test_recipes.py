"""Every recipe in recipes/ loads, passes its cross-field checks and builds its transformers model config; every launch
config in recipes/accelerate/ is one that accelerate itself accepts. No weights are built, nothing is downloaded.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_recipes.py -q
"""

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach for the Hub

import pytest
import yaml

from sslnlp.config import PretrainConfig, load_config
from sslnlp.models.modeling import build_model_config, usable_positions
from sslnlp.objectives import build_objective
from sslnlp.data.tokenizer import round_up_vocab_size, special_tokens_for

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
LAUNCH_CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
PAPER_GPUS = 8  # the paper recipes' batch settings are written for one machine with 8 GPUs


class StandInTokenizer:
    """What build_model_config reads from a tokenizer: its length and special-token ids.

    The length is what ``train_tokenizer`` targets for the recipe (vocab_size rounded up to a multiple of 64, reached on
    a corpus of realistic size); the ids are the ones ``train_tokenizer`` assigns (special tokens first, in order).
    """

    def __init__(self, kind: str, encoder: bool, vocab_size: int):
        self.size = round_up_vocab_size(vocab_size, 64)
        special_tokens = special_tokens_for(kind, encoder)
        token_ids = {token: index for index, token in enumerate(dict.fromkeys(special_tokens.values()))}
        for name in ("pad_token", "bos_token", "eos_token", "sep_token", "cls_token", "mask_token", "unk_token"):
            token = special_tokens.get(name)
            setattr(self, f"{name}_id", token_ids[token] if token is not None else None)

    def __len__(self) -> int:
        return self.size


def load_recipe(path: Path) -> PretrainConfig:
    config = load_config(PretrainConfig, path)
    config.check()
    return config


def model_config_of(config: PretrainConfig):
    objective = build_objective(config.objective, config.model)
    tokenizer = StandInTokenizer(config.tokenizer.kind, objective.encoder, config.tokenizer.vocab_size)
    model_config = build_model_config(config.model, tokenizer, config.data.max_seq_length)
    objective.check_model_config(model_config)
    return model_config, tokenizer


def test_there_are_recipes_and_launch_configs():
    names = {path.name for path in RECIPES}
    assert {"tiny-cpu.yaml", "bert-base.yaml", "roberta-base.yaml", "modernbert-base.yaml", "gpt2-small.yaml"} <= names
    assert {path.name for path in LAUNCH_CONFIGS} >= {"cpu-2proc.yaml", "single-gpu.yaml", "ddp-8gpu.yaml", "fsdp-8gpu.yaml",
                                                      "deepspeed-zero2-8gpu.yaml", "multinode-template.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_loads_and_builds_its_model_config(recipe):
    config = load_recipe(recipe)
    if config.model.model_name_or_path or config.tokenizer.tokenizer_name_or_path:
        pytest.skip("the model config comes from a checkpoint / existing tokenizer (not available offline)")
    model_config, tokenizer = model_config_of(config)
    assert model_config.model_type == config.model.model_type
    assert model_config.vocab_size >= len(tokenizer)
    assert model_config.vocab_size % config.model.pad_vocab_to_multiple_of == 0
    positions = usable_positions(model_config)
    assert positions is None or positions >= config.data.max_seq_length
    for key, value in config.model.config_overrides.items():  # overrides reach the config (or a property built from them)
        if key in ("global_attn_every_n_layers", "rope_parameters", "global_rope_theta", "local_rope_theta"):
            continue  # turned into layer_types / standardised rope parameters; checked for modernbert below
        assert getattr(model_config, key) == value, key


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_header_names_files_that_exist(recipe):
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert header, f"{recipe.name} needs a header comment: what it reproduces, its source, how to launch it"
    for mentioned in re.findall(r"recipes/[\w./-]+\.yaml", "\n".join(header)):
        assert (ROOT / mentioned).is_file(), f"{recipe.name} mentions {mentioned}, which does not exist"


# Settings from the papers (and nanoGPT for GPT-2); see each recipe's header. The global batch is per-device batch x
# accumulation x 8 GPUs.
PAPER_SETTINGS = {
    "bert-base": dict(
        global_batch=256, max_seq_length=128, vocab_size=30528, mlm_probability=0.15, learning_rate=1e-4,
        betas=(0.9, 0.999), weight_decay=0.01, warmup_steps=10000, scheduler="linear", mixed_precision="bf16",
        model=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
    "roberta-base": dict(
        global_batch=8192, max_seq_length=512, vocab_size=50304, mlm_probability=0.15, learning_rate=6e-4,
        betas=(0.9, 0.98), adam_epsilon=1e-6, weight_decay=0.01, warmup_steps=24000, max_steps=500000,
        scheduler="linear", mixed_precision="bf16",
        model=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
    "modernbert-base": dict(
        global_batch=4608, max_seq_length=1024, vocab_size=50368, mlm_probability=0.3, learning_rate=8e-4,
        betas=(0.9, 0.98), weight_decay=1e-5, scheduler="wsd", mixed_precision="bf16",
        model=dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
                   local_attention=128)),
    "gpt2-small": dict(
        global_batch=480, max_seq_length=1024, vocab_size=50304, learning_rate=6e-4, betas=(0.9, 0.95),
        weight_decay=0.1, warmup_steps=2000, max_steps=600000, scheduler="cosine", min_lr_ratio=0.1, max_grad_norm=1.0,
        mixed_precision="bf16", model=dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024)),
}


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_recipe_keeps_the_paper_settings(name):
    expected = PAPER_SETTINGS[name]
    recipe = ROOT / "recipes" / f"{name}.yaml"
    config = load_recipe(recipe)
    training = config.training
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps * PAPER_GPUS == expected["global_batch"]
    assert config.data.max_seq_length == expected["max_seq_length"]
    assert (training.adam_beta1, training.adam_beta2) == expected["betas"]
    assert training.learning_rate == pytest.approx(expected["learning_rate"])
    assert training.weight_decay == pytest.approx(expected["weight_decay"])
    assert training.lr_scheduler_type == expected["scheduler"]
    assert training.mixed_precision == expected["mixed_precision"]
    for key in ("warmup_steps", "max_steps", "min_lr_ratio", "max_grad_norm", "adam_epsilon"):
        if key in expected:
            assert getattr(training, key) == pytest.approx(expected[key]), key
    if "mlm_probability" in expected:
        assert config.objective.name == "mlm"
        assert config.objective.mlm_probability == pytest.approx(expected["mlm_probability"])
        assert (config.objective.mask_replace_probability, config.objective.random_replace_probability) == (0.8, 0.1)
    else:
        assert config.objective.name == "clm"
    model_config, _ = model_config_of(config)
    assert model_config.vocab_size == expected["vocab_size"]
    for key, value in expected["model"].items():
        assert getattr(model_config, key) == value, key
    header = "\n".join(line for line in recipe.read_text().splitlines() if line.startswith("#"))
    assert f"accelerate launch --config_file recipes/accelerate/ddp-8gpu.yaml -m sslnlp pretrain recipes/{name}.yaml" in header
    assert f"sslnlp pretrain recipes/{name}.yaml training.gradient_accumulation_steps=" in header  # the one-GPU launch


def test_modernbert_alternates_global_and_local_attention():
    model_config, _ = model_config_of(load_recipe(ROOT / "recipes" / "modernbert-base.yaml"))
    assert model_config.layer_types == ["full_attention" if layer % 3 == 0 else "sliding_attention" for layer in range(22)]
    assert model_config.rope_parameters["full_attention"]["rope_theta"] == 10000.0  # phase 1 (before context extension)
    assert model_config.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0


def test_bert_phase_one_ends_on_the_papers_linear_decay():
    # The paper decays linearly from 1e-4 after 10k warmup steps to 0 at step 1M; phase 1 stops at 900k.
    training = load_recipe(ROOT / "recipes" / "bert-base.yaml").training
    paper_rate_at_900k = (1_000_000 - 900_000) / (1_000_000 - training.warmup_steps)
    assert training.max_steps == 900_000
    assert training.min_lr_ratio == pytest.approx(paper_rate_at_900k, abs=1e-5)


@pytest.mark.parametrize("launch_config", LAUNCH_CONFIGS, ids=lambda path: path.stem)
def test_launch_config_is_accepted_by_accelerate(launch_config):
    from accelerate.commands.config.config_args import load_config_from_file

    values = yaml.safe_load(launch_config.read_text())
    assert "distributed_type" in values and "num_processes" in values
    assert isinstance(values["distributed_type"], str) and isinstance(values["mixed_precision"], str)  # not YAML's no -> False
    assert values["num_processes"] % values.get("num_machines", 1) == 0
    cluster = load_config_from_file(str(launch_config))  # raises on unknown keys or values accelerate does not know
    assert cluster.num_processes == values["num_processes"]


def test_cpu_launch_config_starts_two_processes():
    values = yaml.safe_load((ROOT / "recipes" / "accelerate" / "cpu-2proc.yaml").read_text())
    assert values["num_processes"] == 2
    assert values["use_cpu"] is True
    assert values["mixed_precision"] == "no"


# ----------------------------------------------------------------------------------- recipes for a fresh machine

USER_RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
DATA_SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".tsv", ".parquet", ".gz", ".xz", ".bz2", ".zst", ".arrow")
OUTPUT_KEYS = {"output_dir", "model_name_or_path", "logging_dir", "hub_model_id"}  # what a recipe writes or reads back


def local_paths(values, key: str = "") -> list[tuple[str, str]]:
    """(key, value) of every string in a recipe that names a local file or folder rather than a Hub repository."""
    if isinstance(values, dict):
        return [found for k, v in values.items() for found in local_paths(v, f"{key}.{k}" if key else str(k))]
    if isinstance(values, list):
        return [found for item in values for found in local_paths(item, key)]
    if isinstance(values, str) and (values.startswith(("/", "~", "./", "../")) or values.lower().endswith(DATA_SUFFIXES)
                                    or "*" in values):
        return [(key, values)]
    return []


@pytest.mark.parametrize("recipe", USER_RECIPES, ids=lambda path: str(path.relative_to(ROOT / "recipes")))
def test_user_recipes_read_nothing_outside_the_package_and_data(recipe):
    """A recipe the README points users to runs on a machine with only the package and network: its corpus is a
    built-in source or a Hub dataset, its tasks come from the Hub or data/; the team's ../shared/corpora stays in
    benchmarks/."""
    values = yaml.safe_load(recipe.read_text()) or {}
    for key, value in local_paths(values):
        if key.split(".")[-1] in OUTPUT_KEYS or key in ("output_dir", "main_training_function"):
            assert value.startswith("runs/") or not value.startswith(("/", "..")), f"{recipe.name}: {key}={value}"
            continue
        assert value.startswith("data/"), (f"{recipe.relative_to(ROOT)}: {key}={value!r} is a local path outside "
                                           "the package and data/; stream a Hub dataset or move the recipe to benchmarks/")


def test_readme_points_users_to_recipes_that_exist_and_marks_the_team_local_ones():
    readme = (ROOT / "README.md").read_text()
    for mentioned in set(re.findall(r"(?<![\w/])recipes/[\w./-]+\.yaml", readme)):
        assert (ROOT / mentioned).is_file(), f"README points to {mentioned}, which does not exist"
    for recipe in (ROOT / "benchmarks" / "recipes").rglob("*.yaml"):
        assert recipe.read_text().startswith("# TEAM-LOCAL"), f"{recipe} must say it reads the team's local corpora"


def hub_stand_ins() -> dict[str, dict[str, bytes]]:
    """Small stand-ins, in the Hub's layout (README configs + Parquet), for the datasets the CPU recipes stream:
    WikiText-103 (a paragraph or heading per record, blank lines between) and GLUE SST-2 (hidden test labels: -1)."""
    import io
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq
    import textgen

    def parquet(rows):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        return buffer.getvalue()

    def card(config, splits):
        files = "".join(f"  - split: {s}\n    path: {config}/{s}-*\n" for s in splits)
        return f"---\nconfigs:\n- config_name: {config}\n  data_files:\n{files}---\n# stand-in\n".encode()

    def wikitext(seed, count):
        rows = []
        for index, paragraph in enumerate(textgen.documents(count, seed=seed)):
            rows += ([{"text": ""}, {"text": f" = Article {index} = \n"}] if index % 10 == 0 else []) + \
                    [{"text": f" {paragraph} \n"}, {"text": ""}]
        return rows

    rng = random.Random(0)

    def sst2(count, hidden=False):
        rows = []
        for index in range(count):
            sentence = textgen.sentence(rng).lower()
            animal = sentence.startswith(("the cat", "a dog", "the small bird"))
            rows.append({"sentence": sentence, "label": -1 if hidden else int(animal), "idx": index})
        return rows

    return {
        "Salesforce/wikitext": {"README.md": card("wikitext-103-raw-v1", ["train", "validation"]),
                                "wikitext-103-raw-v1/train-00000-of-00001.parquet": parquet(wikitext(1, 3000)),
                                "wikitext-103-raw-v1/validation-00000-of-00001.parquet": parquet(wikitext(2, 100))},
        "nyu-mll/glue": {"README.md": card("sst2", ["train", "validation", "test"]),
                         "sst2/train-00000-of-00001.parquet": parquet(sst2(400)),
                         "sst2/validation-00000-of-00001.parquet": parquet(sst2(100)),
                         "sst2/test-00000-of-00001.parquet": parquet(sst2(100, hidden=True))},
    }


@pytest.mark.parametrize("recipe", ["cram-cpu", "electra-cpu"])
def test_cpu_recipes_run_on_a_fresh_machine_from_the_hub(recipe, tmp_path):
    """The recipe as a user runs it, with nothing on the machine but the package: the corpus streams from the Hub
    (the local Hub server, HF_ENDPOINT), the tokenizer is trained on it, the held-out split and the SST-2 probe come
    from the Hub too. Only the budget and the tokenizer's size are cut down."""
    import json
    import subprocess
    import sys

    from hub_server import HubServer

    with HubServer() as hub:
        for repo, files in hub_stand_ins().items():
            hub.add_dataset(repo, files)
        environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                       "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "sslnlp", "pretrain", f"recipes/{recipe}.yaml", f"output_dir={tmp_path / 'run'}",
             "training.max_time=0", "training.max_steps=4", "tokenizer.vocab_size=512", "tokenizer.training_documents=500"],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        fetched = {r["path"].split("/resolve/")[-1].split("/", 1)[-1] for r in hub.requests if "/resolve/" in r["path"]}
    assert {"wikitext-103-raw-v1/train-00000-of-00001.parquet", "wikitext-103-raw-v1/validation-00000-of-00001.parquet",
            "sst2/train-00000-of-00001.parquet", "sst2/validation-00000-of-00001.parquet"} <= fetched
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["eval_loss"] > 0
    probes = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "probe_task" in line]
    assert [(p["probe_task"], p["probe_split"]) for p in probes] == [("sst2", "validation")]
