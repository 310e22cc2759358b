"""Adapting a checkpoint: continuation from each family starts at the checkpoint's own loss, vocabulary extension for
WordPiece / BPE / Unigram, replay, forgetting measured, task-adaptive pretraining, exact resume, one-line refusals."""

import json
import shutil

import pytest
import torch
import textgen
from conftest import tiny_overrides

from sslnlp.config import ConfigError, EvaluateConfig, PretrainConfig, TaskConfig, load_config
from sslnlp.data.tokenizer import train_tokenizer
from sslnlp.data.vocabulary import VocabularyError, extend_tokenizer, read_extension
from sslnlp.models.modeling import ModelError
from sslnlp.training.loop import pretrain

ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
FAMILIES = {  # model type -> (objective, config overrides)
    "bert": ("mlm", {**ENCODER, "max_position_embeddings": 64}),
    "roberta": ("mlm", {**ENCODER, "max_position_embeddings": 66}),
    "modernbert": ("mlm", {**ENCODER, "max_position_embeddings": 64, "global_attn_every_n_layers": 1}),
    "electra": ("electra", {**ENCODER, "embedding_size": 32, "max_position_embeddings": 64}),
    "gpt2": ("clm", {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}),
}


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return str(path)


def metrics(output_dir):
    return [json.loads(line) for line in open(f"{output_dir}/metrics.jsonl")]


def train(overrides):
    return pretrain(load_config(PretrainConfig, None, [str(o) for o in overrides]))


def continuation(output_dir, checkpoint, train_files, steps=2, **extra):
    """Overrides that continue ``checkpoint`` (its tokenizer, its architecture) on ``train_files``."""
    values = {"output_dir": output_dir, "model.model_name_or_path": checkpoint, "data.train_files": train_files,
              "data.max_seq_length": 32, "data.shuffle_buffer_size": 64, "data.validation_holdout_every": 10,
              "training.per_device_train_batch_size": 8, "training.max_steps": steps, "training.learning_rate": 1e-3,
              "training.mixed_precision": "no", "training.logging_steps": 1, "evaluation.eval_blocks": 32,
              "evaluation.per_device_eval_batch_size": 16, **extra}
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapt-text")
    return {"general": write_jsonl(folder / "general.jsonl", textgen.documents(400, seed=1)),
            "general_held_out": write_jsonl(folder / "general-held-out.jsonl", textgen.documents(40, seed=2)),
            "domain": write_jsonl(folder / "domain.jsonl", textgen.domain_documents(300, seed=3))}


def base_run(folder, tokenizer_dir, model_type, corpus):
    objective, overrides = FAMILIES[model_type]
    values = tiny_overrides(folder, tokenizer_dir, objective, steps=6, **{"data.train_files": corpus,
                                                                         "training.mixed_precision": "no"})
    values = [v for v in values if not v.startswith(("model.", "objective.name"))]
    values += [f"objective.name={objective}", f"model.model_type={model_type}",
               f"model.config_overrides={json.dumps(overrides)}"]
    return train(values)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_a_continuation_starts_at_the_checkpoints_own_loss(model_type, texts, wordpiece_dir, bpe_dir, tmp_path):
    """Step 0 of a continuation, evaluated on the same held-out batches as the checkpoint's last evaluation, gives
    the same loss: nothing (head, generator, embeddings) re-initialised on the way."""
    tokenizer = bpe_dir if model_type == "gpt2" else wordpiece_dir
    original = base_run(tmp_path / "base", tokenizer, model_type, texts["general"])
    train(continuation(tmp_path / "continued", tmp_path / "base", texts["general"],
                       **{"objective.name": FAMILIES[model_type][0]}))
    start = metrics(tmp_path / "continued")[0]
    assert start["step"] == 0 and "loss" not in start
    assert start["eval_loss"] == pytest.approx(original["eval_loss"], rel=1e-5)
    if model_type == "electra":  # the checkpoint's generator continues too (a fresh one would be near uniform)
        assert start["eval_generator_loss"] == pytest.approx(original["eval_generator_loss"], rel=1e-5)


def test_a_checkpoint_without_the_objectives_head_is_refused(texts, wordpiece_dir, tmp_path):
    from transformers import AutoModel

    base_run(tmp_path / "base", wordpiece_dir, "bert", texts["general"])
    AutoModel.from_pretrained(tmp_path / "base").save_pretrained(tmp_path / "encoder-only")  # no MLM head
    shutil.copy(tmp_path / "base" / "tokenizer.json", tmp_path / "encoder-only")
    shutil.copy(tmp_path / "base" / "tokenizer_config.json", tmp_path / "encoder-only")
    with pytest.raises(ModelError, match="has no trained masked-LM head") as error:
        train(continuation(tmp_path / "continued", tmp_path / "encoder-only", texts["domain"]))
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def bases(texts, tmp_path_factory):
    """A tiny BERT trained on the general text with each tokenizer kind (encoder special tokens)."""
    folder = tmp_path_factory.mktemp("bases")
    general = textgen.documents(300, seed=0)
    found = {}
    for kind, size in (("wordpiece", 512), ("bpe", 384), ("unigram", 384)):
        train_tokenizer(general, folder / f"tokenizer-{kind}", kind=kind, vocab_size=size)
        base_run(folder / kind, folder / f"tokenizer-{kind}", "bert", texts["general"])
        found[kind] = folder / kind
    return found


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_vocabulary_extension_adds_used_tokens_initialised_from_their_pieces(kind, bases, texts, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    base = bases[kind]
    train(continuation(tmp_path / "adapted", base, texts["domain"], steps=1,
                       **{"tokenizer.extend_vocabulary": 24, "tokenizer.min_frequency": 2}))
    start = tmp_path / "adapted" / "extended-start"
    old_tokenizer, new_tokenizer = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(start)
    record = read_extension(start)
    new_ids = set(record["pieces"])
    assert len(new_ids) == record["new_tokens"] and 0 < record["new_tokens"] <= 24
    assert min(new_ids) >= len(old_tokenizer) and len(new_tokenizer) == len(old_tokenizer) + len(new_ids)
    # old ids are unchanged; text of the old domain reads the same, in no more tokens (a word frequent in both
    # domains, such as a capitalised "The" that Unigram split, becomes one token in both)
    old_vocab, new_vocab = old_tokenizer.get_vocab(), new_tokenizer.get_vocab()
    assert all(new_vocab[token] == index for token, index in old_vocab.items())
    for text in textgen.documents(20, seed=5):
        old_ids, new_ids_of_text = old_tokenizer(text)["input_ids"], new_tokenizer(text)["input_ids"]
        assert len(new_ids_of_text) <= len(old_ids)
        assert new_tokenizer.decode(new_ids_of_text) == old_tokenizer.decode(old_ids)
    # the new tokens are used on the domain's text, and they shorten it
    domain = textgen.domain_documents(20, seed=9)
    used = {i for t in domain for i in new_tokenizer(t)["input_ids"]} & new_ids
    assert len(used) >= 3
    assert record["tokens_per_word_after"] < 0.9 * record["tokens_per_word_before"]
    # each new row (input embedding, tied output, output bias) is the mean of its pieces' rows; old rows untouched
    old_model = AutoModelForMaskedLM.from_pretrained(base)
    new_model = AutoModelForMaskedLM.from_pretrained(start)
    old_embeddings = old_model.get_input_embeddings().weight
    new_embeddings = new_model.get_input_embeddings().weight
    assert torch.equal(new_embeddings[:old_embeddings.shape[0]][:len(old_tokenizer)],
                       old_embeddings[:len(old_tokenizer)])
    old_bias, new_bias = old_model.get_output_embeddings().bias, new_model.get_output_embeddings().bias
    for new_id, pieces in record["pieces"].items():
        assert torch.allclose(new_embeddings[new_id], old_embeddings[pieces].mean(0), atol=1e-6)
        assert torch.allclose(new_bias[new_id], old_bias[pieces].mean(0), atol=1e-6)
    # the run's export reloads with the extended vocabulary and round-trips text; fill-mask scores a new token
    exported = AutoTokenizer.from_pretrained(tmp_path / "adapted")
    assert exported.get_vocab() == new_vocab
    def decoded(tokenizer, text):  # spaces aside (WordPiece's decoder puts them around punctuation)
        return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]).replace(" ", "")

    for text in domain[:5]:  # what the old tokenizer reproduced, the new one does; it knows no fewer characters
        before, after = decoded(old_tokenizer, text), decoded(exported, text)
        if before.lower() == text.replace(" ", "").lower():
            assert after == before
        assert after.count(exported.unk_token) <= before.count(old_tokenizer.unk_token)
    word = record["words"][0]["token"]
    fill = pipeline("fill-mask", model=str(tmp_path / "adapted"))
    prediction = fill(f"the {exported.mask_token} synthesises", targets=[exported.convert_ids_to_tokens(
        new_vocab[word])])
    assert prediction[0]["token"] == new_vocab[word]


def test_an_adapted_run_with_replay_resumes_exactly_and_reports_forgetting(bases, texts, tmp_path):
    extra = {"tokenizer.extend_vocabulary": 16, "data.replay_files": texts["general"], "data.replay_share": 0.25,
             "evaluation.general_validation_files": texts["general_held_out"], "training.save_steps": 3,
             "evaluation.eval_steps": 3}
    summary = train(continuation(tmp_path / "full", bases["wordpiece"], texts["domain"], steps=6, **extra))
    full = metrics(tmp_path / "full")
    assert summary["general_eval_loss_change"] == pytest.approx(
        summary["general_eval_loss"] - summary["general_eval_loss_before"])
    assert summary["eval_loss_before"] == full[0]["eval_loss"] and summary["vocabulary_extension"]["new_tokens"] == 16
    # a run stopped after step 3: what the uninterrupted run had written by then (the extended start included)
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
    for part in ("checkpoints/checkpoint-00000003", "extended-start"):
        shutil.copytree(tmp_path / "full" / part, tmp_path / "stopped" / part)
    resumed = train(continuation(tmp_path / "stopped", bases["wordpiece"], texts["domain"], steps=6, **extra,
                                 **{"training.resume_from_checkpoint": "auto"}))
    losses = [r["loss"] for r in full if "loss" in r]
    assert [r["loss"] for r in metrics(tmp_path / "stopped") if "loss" in r] == losses[3:]
    assert open(tmp_path / "stopped" / "model.safetensors", "rb").read() == \
        open(tmp_path / "full" / "model.safetensors", "rb").read()
    assert resumed["general_eval_loss_before"] == summary["general_eval_loss_before"]  # kept in the checkpoint


def test_replay_mixes_the_general_text_at_its_share(texts):
    from sslnlp.config import DataConfig
    from sslnlp.data.corpus import training_and_validation_corpora

    data = DataConfig(train_files=texts["domain"], replay_files=texts["general"], replay_share=0.3)
    train_corpus, _ = training_and_validation_corpora(data)
    general = set(textgen.documents(400, seed=1))
    drawn = [text for text, _ in zip(train_corpus, range(2000))]
    share = sum(text in general for text in drawn) / len(drawn)
    assert 0.26 < share < 0.34


def test_task_adaptive_pretraining_reads_only_the_train_split(wordpiece_dir, tmp_path):
    from sslnlp.evaluation.tasks import load_task, train_texts

    rows = [{"text": f"{text} ({index})", "label": str(index % 2)}  # each text once: a repeat is no leak
            for index, text in enumerate(textgen.domain_documents(60, 4))]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "task.yaml"
    # validation and test files that do not exist: opening either would fail the run
    recipe.write_text(f"model_name_or_path: x\ntasks:\n  - name: cells\n    train_file: {tmp_path}/train.jsonl\n"
                      f"    validation_file: {tmp_path}/missing-validation.jsonl\n"
                      f"    test_file: {tmp_path}/missing-test.jsonl\n")
    base = tmp_path / "base"
    base_run(base, wordpiece_dir, "bert", write_jsonl(tmp_path / "general.jsonl", textgen.documents(200, 1)))
    summary = train(continuation(tmp_path / "tapt", base, "unused.jsonl", steps=2,
                                 **{"data.task_texts": f"{recipe}#cells", "tokenizer.extend_vocabulary": 4}))
    assert summary["vocabulary_extension"]["documents"] == len(rows)  # every train text, and nothing else, read
    # a task whose held-out splits are carved from its train file: exactly fine-tuning's train split is read
    carved = TaskConfig(name="cells", train_file=str(tmp_path / "train.jsonl"), split_ratio=0.2)
    task = load_task(carved)
    assert train_texts(carved) == [example.text for example in task.train]
    assert not set(train_texts(carved)) & {example.text for example in task.validation + task.test}


def test_bad_adaptation_inputs_give_one_line_errors(bases, texts, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def refused(error_type, match, overrides):
        with pytest.raises(error_type, match=match) as error:
            train(overrides)
        assert "\n" not in str(error.value)

    refused(ConfigError, "extend_vocabulary=0: give a number", continuation(
        tmp_path / "a", bases["wordpiece"], texts["domain"], **{"tokenizer.extend_vocabulary": 0}))
    refused(VocabularyError, "exceeds the allowed maximum", continuation(
        tmp_path / "b", bases["wordpiece"], texts["domain"], **{"tokenizer.extend_vocabulary": 100000}))
    refused(ConfigError, "set model.model_name_or_path", continuation(
        tmp_path / "c", "", texts["domain"], **{"tokenizer.extend_vocabulary": 8}))
    refused(ConfigError, "replay_files is not", continuation(
        tmp_path / "d", bases["wordpiece"], texts["domain"], **{"data.replay_share": 0.2}))
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "cell": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(VocabularyError, match="WordLevel tokenizer cannot be extended"):
        extend_tokenizer(PreTrainedTokenizerFast(tokenizer_object=word_level), ["cell cell"], 1)
    recipe = tmp_path / "two.yaml"
    recipe.write_text("model_name_or_path: x\ntasks: [{name: a, train_file: a.jsonl}, {name: b, train_file: b.jsonl}]\n")
    refused(ConfigError, "has 2 tasks", continuation(
        tmp_path / "e", bases["wordpiece"], texts["domain"], **{"data.task_texts": recipe}))
    assert load_config(EvaluateConfig, recipe, []).task_configs()[1].name == "b"


def test_task_adaptive_pretraining_from_the_command_line(wordpiece_dir, tmp_path):
    from sslnlp.cli import main

    rows = [{"text": f"{text} ({index})", "label": "a" if index % 2 else "b"}
            for index, text in enumerate(textgen.domain_documents(40, 6))]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "task.yaml"
    recipe.write_text(f"model_name_or_path: x\ntasks: [{{name: cells, train_file: {tmp_path}/train.jsonl, "
                      f"split_ratio: 0.25}}]\n")
    base_run(tmp_path / "base", wordpiece_dir, "bert", write_jsonl(tmp_path / "general.jsonl", textgen.documents(200, 1)))
    main(["pretrain", *continuation(tmp_path / "ignored", tmp_path / "base", "unused.jsonl", steps=2,
                                    **{"tokenizer.extend_vocabulary": 4}),
          "--output-dir", str(tmp_path / "tapt"), f"data.task_texts={recipe}"])
    summary = json.loads((tmp_path / "tapt" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["vocabulary_extension"]["documents"] == 20  # 40 - 2 x 25% held out


def test_a_hub_checkpoint_is_continued_with_its_vocabulary_extended(texts, wordpiece_dir, tmp_path):
    """A Hub name (the local Hub server standing in) continues like a local directory: step 0 at the checkpoint's own
    held-out loss; then, extended, the new tokens' rows are their pieces' means."""
    import os
    import subprocess
    import sys

    from hub_server import HubServer

    original = base_run(tmp_path / "base", wordpiece_dir, "bert", texts["general"])
    files = {path.name: path.read_bytes() for path in (tmp_path / "base").iterdir()
             if path.is_file() and path.name in ("config.json", "model.safetensors", "tokenizer.json",
                                                 "tokenizer_config.json")}
    with HubServer() as hub:
        hub.add_model("me/tiny-bert", files)
        environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
                       "HF_HUB_DISABLE_XET": "1"}
        for name, text, extra in (("plain", "general", {}), ("extended", "domain", {"tokenizer.extend_vocabulary": 12})):
            result = subprocess.run([sys.executable, "-m", "sslnlp", "pretrain", *continuation(
                tmp_path / name, "me/tiny-bert", texts[text], **extra)], env=environment, capture_output=True,
                text=True, timeout=300)
            assert result.returncode == 0, result.stderr[-3000:]
    assert metrics(tmp_path / "plain")[0]["eval_loss"] == pytest.approx(original["eval_loss"], rel=1e-5)
    record = read_extension(tmp_path / "extended" / "extended-start")
    assert record["new_tokens"] == 12
    from transformers import AutoModelForMaskedLM

    start = AutoModelForMaskedLM.from_pretrained(tmp_path / "extended" / "extended-start").get_input_embeddings().weight
    base = AutoModelForMaskedLM.from_pretrained(tmp_path / "base").get_input_embeddings().weight
    for new_id, pieces in record["pieces"].items():
        assert torch.allclose(start[new_id], base[pieces].mean(0), atol=1e-6)
