"""Token classification: word tags aligned to first sub-tokens for every tokenizer kind; entity F1 (seqeval) on a
hand-made case; probe and fine-tune of a tiny pretrained model on a tagging task, with the random-weight twin, into
the results table and a learning curve; a task whose words and tags differ in length is a one-line error."""

import json
import random

import pytest
import textgen
from test_evaluate import one_thread, pretrained  # noqa: F401  (fixtures)

from sslnlp.cli import main
from sslnlp.config import TaskConfig
from sslnlp.evaluation.features import tokenized_words, word_positions
from sslnlp.evaluation.metrics import compute_metrics, entity_f1
from sslnlp.evaluation.tasks import Example, LabelledTask, TaskError, load_task

WORDS = ("The", "antidisestablishmentarianism", "cat", ",", "sat", "on", "Zürich's", "mat", ".")


def tagged_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """A textgen sentence, tagged: subject, object and place phrases as BIO entities, the verb and '.' as O."""
    subject, verb, thing = rng.choice(textgen.SUBJECTS), rng.choice(textgen.VERBS), rng.choice(textgen.OBJECTS)
    parts = [(subject, "SUBJ"), (verb, None), (thing, "OBJ")]
    if rng.random() < 0.5:
        parts.append((rng.choice(textgen.PLACES), "PLACE"))
    words, tags = [], []
    for phrase, kind in parts:
        for index, word in enumerate(phrase.split()):
            words.append(word)
            tags.append("O" if kind is None else f"{'B' if index == 0 else 'I'}-{kind}")
    words[0] = words[0].capitalize()
    return words + ["."], tags + ["O"]


def write_tagging_task(path, count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    rows = [dict(zip(("tokens", "ner_tags"), tagged_sentence(rng))) for _ in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def unigram_tokenizer(documents, tmp_path_factory):
    from sslnlp.data.tokenizer import train_tokenizer

    return train_tokenizer(documents, tmp_path_factory.mktemp("unigram"), kind="unigram", vocab_size=300)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_tags_go_to_each_words_first_sub_token_for_every_tokenizer_kind(kind, request):
    tokenizer = request.getfixturevalue(f"{kind}_tokenizer")
    tags = tuple(range(len(WORDS)))
    task = LabelledTask(name="t", train=[Example(WORDS, None, tags)], validation=[], test=[], problem_type="classification",
                        label_names=[str(t) for t in tags], metrics=["accuracy"], report_split="test", kind="token")
    columns = tokenized_words(task, tokenizer, 64, "train")
    labels, positions = columns["labels"][0], columns["word_positions"][0]
    encoded = tokenizer(" ".join(WORDS), return_offsets_mapping=True)
    pieces = tokenizer.convert_ids_to_tokens(columns["input_ids"][0])
    assert len(pieces) > len(WORDS) + 2  # some words are split into several pieces
    assert positions == sorted(positions) and len(set(positions)) == len(WORDS) and min(positions) >= 0
    assert [labels[p] for p in positions] == list(tags)  # each word's tag at its position
    assert sum(label != -100 for label in labels) == len(WORDS)  # continuation pieces and specials: no target
    start = 0
    for word, position in zip(WORDS, positions):
        first, end = encoded["offset_mapping"][position]
        assert first <= start < end  # the token holding the word's first character...
        earlier = [span for span in encoded["offset_mapping"][:position] if span[0] != span[1]]
        assert all(span[1] <= start for span in earlier)  # ...and no earlier token of the word
        start += len(word) + 1


def test_a_word_cut_off_by_the_length_limit_has_no_position():
    assert word_positions([(0, 0), (0, 3), (4, 6), (0, 0)], ("The", "cat", "sat")) == [1, 2, -1]


def test_entity_f1_counts_whole_entities():
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [[1, 2, 0, 3], [0, 3, 4]]
    guess = [[1, 2, 0, 0], [0, 3, 0]]  # PER right; first LOC missed; second LOC cut short (wrong)
    # 1 right of 2 predicted, of 3 true: precision 1/2, recall 1/3, F1 0.4
    assert entity_f1(guess, gold, names) == pytest.approx(0.4)
    scores = compute_metrics(["entity_f1", "accuracy"], guess, gold, label_names=names)
    assert scores == {"entity_f1": pytest.approx(0.4), "accuracy": pytest.approx(5 / 7)}


def test_a_tagging_task_loads_with_bio_metrics_and_rejects_uneven_rows(tmp_path):
    task = load_task(TaskConfig(name="roles", train_file=write_tagging_task(tmp_path / "t.jsonl", 50),
                                text_field="tokens", label_field="ner_tags", kind="token"))
    assert task.metrics == ["entity_f1", "accuracy"] and "B-SUBJ" in task.label_names
    words, _, tags = task.train[0]
    assert isinstance(words, tuple) and len(words) == len(tags)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "ner_tags": ["O"]}) + "\n")
    with pytest.raises(TaskError, match=r"bad.jsonl:1: 2 words but 1 tags; a token task needs one tag per word"):
        load_task(TaskConfig(train_file=str(tmp_path / "bad.jsonl"), text_field="tokens", label_field="ner_tags",
                             kind="token"))


def test_probe_and_finetune_tag_words_beside_the_random_twin(pretrained, tmp_path):
    model_dir, _ = pretrained
    task = {"name": "roles", "train_file": write_tagging_task(tmp_path / "roles.jsonl", 150), "text_field": "tokens",
            "label_field": "ner_tags", "kind": "token"}
    output = tmp_path / "eval"
    common = [f"model_name_or_path={model_dir}", f"tasks={json.dumps([task])}", "train_sizes=[16, all]",
              "curve_seeds=[0]", "--output-dir", str(output)]
    main(["probe", *common])
    main(["finetune", *common, "finetune.seeds=[0]", "finetune.num_train_epochs=3", "finetune.learning_rate=3e-3",
          "finetune.per_device_train_batch_size=16", "finetune.min_steps=80", "finetune.save_model=false"])
    row = json.loads((output / "results.json").read_text())["tasks"]["roles"]
    assert row["kind"] == "token" and row["metrics"] == ["entity_f1", "accuracy"]
    for key in ("probe", "random_probe"):
        assert 0 <= row[key]["test"]["entity_f1"] <= 1 and "knn" not in row[key]
    for key in ("finetune", "random_finetune"):  # the roles follow from the words and their order: both learn them
        assert row[key]["median"]["entity_f1"] > 0.5, row[key]["median"]  # tagging all O scores 0
    assert set(row["curves"]) == {"probe", "random_probe", "finetune", "random_finetune"}  # no TF-IDF for words
    assert [point["size"] for point in row["curves"]["probe"]] == [16, len(load_task(TaskConfig(**task)).train)]
    table = (output / "results.md").read_text()
    assert "| roles | entity_f1 |" in table and "Learning curve of roles" in table


def tagging_stand_in(names: list[str], seed: int) -> dict[str, bytes]:
    """A dataset repository in the Hub's layout (README config + Parquet with datasets' features: the tags a
    sequence of ClassLabel), for the entity recipes: tagged textgen sentences, their tags renamed to ``names``."""
    import io

    import datasets

    rng = random.Random(seed)
    ours = ["O", "B-SUBJ", "I-SUBJ", "B-OBJ", "I-OBJ", "B-PLACE", "I-PLACE"]
    features = datasets.Features({"id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    files = {"README.md": ("---\nconfigs:\n- config_name: default\n  data_files:\n" + "".join(
        f"  - split: {split}\n    path: data/{split}-*\n" for split in ("train", "validation", "test")) +
        "---\n# stand-in\n").encode()}
    for split, count in (("train", 120), ("validation", 40), ("test", 40)):
        rows = [tagged_sentence(rng) for _ in range(count)]
        table = {"id": [str(i) for i in range(count)], "tokens": [words for words, _ in rows],
                 "ner_tags": [[names.index(names[ours.index(tag)]) for tag in tags] for _, tags in rows]}
        buffer = io.BytesIO()
        datasets.Dataset.from_dict(table, features=features).to_parquet(buffer)
        files[f"data/{split}-00000-of-00001.parquet"] = buffer.getvalue()
    return files


@pytest.mark.parametrize("recipe,repo", [("conll2003", "eriktks/conll2003"), ("wnut17", "leondz/wnut_17")])
def test_entity_recipes_read_their_tags_from_the_hub(recipe, repo, tmp_path, wordpiece_dir):
    """The recipe as a user runs it: the dataset from the Hub (the local Hub server), the tag names from its
    ClassLabel feature, entity F1 for the model and its random twin."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hub_server import HubServer
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "model")
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    root = Path(__file__).resolve().parents[1]
    with HubServer() as hub:
        hub.add_dataset(repo, tagging_stand_in(names, seed=1))
        environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                       "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "sslnlp", "probe", f"recipes/evaluate/{recipe}.yaml",
             f"model_name_or_path={tmp_path / 'model'}", f"tokenizer_name_or_path={wordpiece_dir}", "max_seq_length=64",
             "--output-dir", str(tmp_path / "eval")], cwd=root, env=environment, capture_output=True, text=True,
            timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"][recipe]
    assert row["kind"] == "token" and row["metrics"] == ["entity_f1", "accuracy"] and row["split"] == "test"
    assert {"probe", "random_probe"} <= set(row) and 0 <= row["probe"]["test"]["entity_f1"] <= 1
