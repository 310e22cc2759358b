"""Table-driven: malformed inputs through the command line end with one line `sslnlp: error: ...`, status 2,
no traceback, naming what is wrong and what to do."""

import gzip
import json

import pytest
from conftest import tiny_overrides

from sslnlp.cli import main

GOOD = json.dumps({"text": "the cat sees the red ball"}) + "\n"
LATIN1_LINE = '{"text": "café"}\n'.encode("latin-1")


def write(tmp_path, name, content: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def truncated_gzip(tmp_path) -> str:
    payload = gzip.compress((GOOD * 3000).encode())
    return write(tmp_path, "cut.jsonl.gz", payload[: len(payload) // 2])


def not_a_model(tmp_path) -> str:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("just notes")
    return str(tmp_path / "notes")


def bigger_tokenizer_model(tmp_path, wordpiece_dir, corpus_file) -> str:
    """A tiny checkpoint whose vocabulary (64 rows) is smaller than the test tokenizer's."""
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "small-vocab")
    return str(tmp_path / "small-vocab")


def prepared_then_damaged(tmp_path, wordpiece_dir, corpus_file, damage: str) -> str:
    """A corpus prepared, then its first shard cut in half ("truncate") or its manifest lost ("manifest")."""
    from sslnlp import PretrainConfig, load_config, prepare

    output = tmp_path / "prepared"
    prepare(load_config(PretrainConfig, None, tiny_overrides(tmp_path / "prep-run", wordpiece_dir, **{
        "data.train_files": corpus_file})), output, num_proc=1, shard_tokens=1024)
    if damage == "truncate":
        shard = output / "train" / "shard-00000.arrow"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        (output / "manifest.json").unlink()
    return str(output)


# name -> (overrides builder(tmp_path, wordpiece_dir, corpus_file) -> list[str], expected message fragment)
CASES = {
    "missing corpus file": (lambda t, w, c: [f"data.train_files={t}/nope.jsonl"], "nope.jsonl' does not exist; check the path"),
    "empty glob": (lambda t, w, c: [f"data.train_files={t}/*.parquet"], "matched no files"),
    "empty corpus": (lambda t, w, c: [f"data.train_files={write(t, 'empty.jsonl', chr(10) * 3)}"], "yields no text; is the corpus empty?"),
    "empty corpus, no validation": (lambda t, w, c: [f"data.train_files={write(t, 'empty.jsonl', chr(10) * 3)}",
                                                     "data.validation_holdout_every=0"], "has no documents"),
    "malformed json": (lambda t, w, c: [f"data.train_files={write(t, 'bad.jsonl', GOOD + '{oops' + chr(10))}"], "bad.jsonl:2: malformed JSON"),
    "missing text field": (lambda t, w, c: [f"data.train_files={write(t, 'f.jsonl', json.dumps({'body': 'x'}) + chr(10))}"],
                           "f.jsonl:1: no 'text' field (found ['body']); set data.text_field"),
    "invalid utf-8": (lambda t, w, c: [f"data.train_files={write(t, 'u.jsonl', GOOD.encode() + LATIN1_LINE)}"],
                      "u.jsonl:2: invalid UTF-8"),
    "binary file": (lambda t, w, c: [f"data.train_files={write(t, 'bin.txt', bytes(range(256)) * 4)}"], "contains NUL bytes"),
    "enormous line": (lambda t, w, c: [f"data.train_files={write(t, 'big.txt', 'x' * 5000)}", "data.max_document_bytes=1000"],
                      "big.txt:1: record longer than max_document_bytes=1000"),
    "truncated gzip": (lambda t, w, c: [f"data.train_files={truncated_gzip(t)}"], "the file is truncated or corrupt"),
    "unknown key": (lambda t, w, c: ["training.learnig_rate=1e-3"], "unknown config key 'training.learnig_rate'; did you mean 'training.learning_rate'"),
    "unknown section": (lambda t, w, c: ["trainig.max_steps=3"], "unknown config key 'trainig.max_steps'"),
    "bad int": (lambda t, w, c: ["training.max_steps=ten"], "training.max_steps='ten' is not a valid int"),
    "bad choice": (lambda t, w, c: ["training.lr_scheduler_type=triangle"], "training.lr_scheduler_type='triangle' is not valid; choose one of"),
    "override without =": (lambda t, w, c: ["training.max_steps"], "must look like key=value"),
    "no budget": (lambda t, w, c: ["training.max_steps=0"], "no training budget"),
    "mlm on a decoder": (lambda t, w, c: ["model.model_type=gpt2", "model.config_overrides={}"], "model type 'gpt2' has no masked-LM (mlm) head"),
    "unknown model type": (lambda t, w, c: ["model.model_type=bertt"], "model.model_type='bertt'"),
    "sequence too long": (lambda t, w, c: ["data.max_seq_length=128"], "data.max_seq_length=128 exceeds the model's 64 positions"),
    "whole word with clm": (lambda t, w, c: ["objective.name=clm", "objective.masking=whole_word"],
                            "objective.masking is not an option of objective 'clm'"),
    "unknown objective": (lambda t, w, c: ["objective.name=bert"], "objective.name='bert' is not a registered objective"),
    "mixture weights mismatch": (lambda t, w, c: [f"data.train_files=[{c}, {c}]", "data.mixture_weights=[1]"], "data.mixture_weights has 1 weights for 2"),
    "shuffle an endless mixture to hold out from": (
        lambda t, w, c: [f"data.train_files=[{c}, {c}]", "data.mixture_weights=[1, 1]", "data.shuffle_documents=true",
                         "data.validation_holdout_every=10"],
        "cannot hold out from an endless mixture"),
    "missing tokenizer": (lambda t, w, c: [f"tokenizer.tokenizer_name_or_path={t}/no-tokenizer"], "cannot load tokenizer"),
    "checkpoint dir not a model": (lambda t, w, c: [f"model.model_name_or_path={not_a_model(t)}", f"tokenizer.tokenizer_name_or_path={w}"],
                                   "is not a loadable model"),
    "tokenizer bigger than model vocabulary": (lambda t, w, c: [f"model.model_name_or_path={bigger_tokenizer_model(t, w, c)}", f"tokenizer.tokenizer_name_or_path={w}"],
                                               "but the model's vocabulary has 64; use the tokenizer the checkpoint was trained with"),
    "resume from a non-checkpoint": (lambda t, w, c: [f"training.resume_from_checkpoint={t}"], "is not a complete checkpoint"),
    "unwritable output dir": (lambda t, w, c: [f"output_dir={write(t, 'file', 'x')}/run"], "is not writable"),
    "bad mask rate": (lambda t, w, c: ["objective.mlm_probability=1.5"], "objective.mlm_probability=1.5 must be in (0, 1)"),
    "negative learning rate": (lambda t, w, c: ["training.learning_rate=-1e-3"], "training.learning_rate=-0.001 is out of range; it must be in (0, inf)"),
    "beta of 1": (lambda t, w, c: ["training.adam_beta2=1.0"], "training.adam_beta2=1.0 is out of range; it must be in [0, 1)"),
    "no documents for the tokenizer": (lambda t, w, c: ["tokenizer.training_documents=0"], "tokenizer.training_documents=0 is out of range"),
    "truncated prepared shard": (lambda t, w, c: [f"data.train_files={prepared_then_damaged(t, w, c, 'truncate')}"],
                                 "shard-00000.arrow is truncated or changed since sslnlp prepare wrote it"),
    "prepared directory without its manifest": (
        lambda t, w, c: [f"data.train_files={prepared_then_damaged(t, w, c, 'manifest')}"],
        "looks like a prepared directory without its manifest.json (an interrupted prepare, or a copy"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_error(case, tmp_path, wordpiece_dir, corpus_file, capsys):
    build, expected = CASES[case]
    arguments = tiny_overrides(tmp_path / "run", wordpiece_dir, steps=3, **{"data.train_files": corpus_file})
    arguments += build(tmp_path, wordpiece_dir, corpus_file)
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sslnlp: error: "), err[-5:]
    assert expected in err[-1], err[-1]
    assert not any("Traceback" in line for line in err)


def test_bad_recipe_files(tmp_path, capsys):
    for content, expected in [("training:\n  max_steps: [\n", "invalid YAML"), ("- a list\n", "must be a mapping"),
                              ("trainig:\n  max_steps: 3\n", "unknown config key 'trainig'; did you mean 'training'")]:
        recipe = write(tmp_path, "recipe.yaml", content)
        with pytest.raises(SystemExit):
            main(["pretrain", recipe])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"sslnlp: error: {recipe}") and expected in last, last
    with pytest.raises(SystemExit):
        main(["pretrain", str(tmp_path / "missing.yaml")])
    assert "does not exist; see recipes/" in capsys.readouterr().err


def labelled(tmp_path, rows) -> str:
    return write(tmp_path, "task.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


GOOD_ROWS = [{"text": f"sentence number {i}", "label": ["a", "b"][i % 2]} for i in range(40)]
TAGGED_ROWS = "".join(json.dumps({"tokens": ["a", "b", "c"], "tags": ["O", "B-X", "I-X"][: 2 if i == 2 else 3]}) + "\n"
                      for i in range(40))

EVALUATION_CASES = {
    "not a model": (lambda t, w: [f"model_name_or_path={not_a_model(t)}", f"tasks=[{{train_file: {labelled(t, GOOD_ROWS)}}}]"],
                    "is not a loadable model"),
    "missing task file": (lambda t, w: [f"tasks=[{{train_file: {t}/none.jsonl}}]"], "none.jsonl' does not exist; check the path"),
    "missing label column": (lambda t, w: [f"tasks=[{{train_file: {labelled(t, GOOD_ROWS)}, label_field: gold}}]"],
                             "task.jsonl:1: no column 'gold' (found ['text', 'label']); set the task's label_field"),
    "regression label not a number": (lambda t, w: [f"tasks=[{{train_file: {labelled(t, GOOD_ROWS)}, problem_type: regression}}]"],
                                      "task.jsonl:1: label 'a' is not a number; problem_type=regression needs numeric labels"),
    "unknown task key": (lambda t, w: [f"tasks=[{{train_fle: {labelled(t, GOOD_ROWS)}}}]"],
                         "unknown config key 'tasks[0].train_fle'; did you mean 'train_file'?"),
    "curve size above the train split": (lambda t, w: [f"tasks=[{{train_file: {labelled(t, GOOD_ROWS)}}}]",
                                                       "train_sizes=[16, 500]"],
                                         "train_sizes: 500 is larger than task 'task''s train split (32 examples)"),
    "curve size below the classes": (lambda t, w: [f"tasks=[{{train_file: {labelled(t, GOOD_ROWS)}}}]", "train_sizes=[1]"],
                                     "train_sizes: 1 is smaller than task 'task''s 2 classes"),
    "token task with uneven words and tags": (
        lambda t, w: [f"tasks=[{{train_file: {write(t, 'tags.jsonl', TAGGED_ROWS)}, text_field: tokens, "
                      "label_field: tags, kind: token}]"],
        "tags.jsonl:3: 3 words but 2 tags; a token task needs one tag per word"),
    "curve size not a number": (lambda t, w: [f"tasks=[{{train_file: {labelled(t, GOOD_ROWS)}}}]", "train_sizes=[few]"],
                                "train_sizes=['few'] must list positive integers or 'all'"),
}


@pytest.mark.parametrize("command", ["probe", "finetune"])
@pytest.mark.parametrize("case", sorted(EVALUATION_CASES))
def test_bad_evaluation_input_gives_one_line_error(case, command, tmp_path, wordpiece_dir, capsys):
    from transformers import BertConfig, BertForMaskedLM

    model_dir = tmp_path / "model"
    BertForMaskedLM(BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(model_dir)
    build, expected = EVALUATION_CASES[case]
    arguments = [f"model_name_or_path={model_dir}", f"tokenizer_name_or_path={wordpiece_dir}", f"output_dir={tmp_path}/eval"]
    arguments += build(tmp_path, wordpiece_dir)
    with pytest.raises(SystemExit) as exit_info:
        main([command, *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sslnlp: error: ") and expected in err[-1], err[-3:]
    assert not any("Traceback" in line for line in err)


def test_task_names_cannot_escape_the_output_directory(tmp_path, wordpiece_dir, capsys):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "model")
    for name in ("../escaped", "/etc/x", "a/b"):
        with pytest.raises(SystemExit):
            main(["finetune", f"model_name_or_path={tmp_path / 'model'}", f"tokenizer_name_or_path={wordpiece_dir}",
                  f"output_dir={tmp_path}/eval", f"tasks=[{{name: '{name}', train_file: {labelled(tmp_path, GOOD_ROWS)}}}]"])
        assert "must be a plain name" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists()


def test_prepare_into_a_file_names_it(tmp_path, wordpiece_dir, corpus_file, capsys):
    readme = write(tmp_path, "README.md", "# notes\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", *tiny_overrides(tmp_path / "run", wordpiece_dir, **{"data.train_files": corpus_file}),
              "--output-dir", readme])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"sslnlp: error: --output-dir={readme!r} is a file, not a directory; give a directory (new or "
                    "existing) instead"), last
    assert (tmp_path / "README.md").read_text() == "# notes\n"  # nothing already written is lost
