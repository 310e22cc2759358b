"""The command line: one room, every subcommand listed, one spelling of the output location (the old one still
works, saying so), and a recipe with dotted overrides read the same way by every command that takes one."""

import json

import pytest
from conftest import tiny_overrides

from sslnlp.cli import COMMANDS, main, make_parser

WRITING_COMMANDS = ["pretrain", "prepare", "tokenizer", "probe", "finetune", "report"]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert set(COMMANDS) == {"pretrain", "prepare", "tokenizer", "probe", "finetune", "report", "push"}
    assert all(f"    {name}" in listed for name in COMMANDS), listed


@pytest.mark.parametrize("command", WRITING_COMMANDS)
def test_every_writing_command_takes_output_dir_and_the_old_spelling(command, capsys):
    positional = {"tokenizer": ["corpus.txt"], "report": ["runs/a"]}.get(command, [])
    parser = make_parser()
    assert parser.parse_args([command, *positional, "--output-dir", "out"]).output_dir == "out"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--output-dir DIR" in capsys.readouterr().out
    assert parser.parse_args([command, *positional, "--output", "old"]).output_dir == "old"
    assert "sslnlp: --output is deprecated; use --output-dir (same meaning)" in capsys.readouterr().err


def test_output_dir_is_the_run_directory_of_a_recipe_command(tmp_path, wordpiece_dir, corpus_file):
    main(["pretrain", *tiny_overrides(tmp_path / "ignored", wordpiece_dir, steps=2, **{"data.train_files": corpus_file,
          "data.validation_holdout_every": 0}), "--output-dir", str(tmp_path / "run")])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
    assert not (tmp_path / "ignored").exists()


def test_prepare_with_the_old_spelling_still_prepares(tmp_path, wordpiece_dir, corpus_file, capsys):
    main(["prepare", *tiny_overrides(tmp_path / "run", wordpiece_dir, **{"data.train_files": corpus_file}),
          "--output", str(tmp_path / "shards"), "--num-proc", "1"])
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["complete"]
    assert "--output is deprecated" in capsys.readouterr().err


def test_prepare_without_an_output_dir_says_so(tmp_path, wordpiece_dir, corpus_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", *tiny_overrides(tmp_path / "run", wordpiece_dir, **{"data.train_files": corpus_file})])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("sslnlp: error: sslnlp prepare needs --output-dir DIR (where to write)")


def test_overrides_may_come_before_and_after_the_flags():
    from sslnlp.cli import parse_arguments

    parser = make_parser()
    args = parse_arguments(parser, ["probe", "a=1", "--output-dir", "out", "b=2", "--quiet", "c=3"])
    assert ([args.recipe, *args.overrides], args.output_dir) == (["a=1", "b=2", "c=3"], "out")  # the first: no recipe
    args = parse_arguments(parser, ["pretrain", "--output-dir", "out", "recipe.yaml", "max_steps=3"])
    assert (args.recipe, args.overrides) == ("recipe.yaml", ["max_steps=3"])
    with pytest.raises(SystemExit):
        parse_arguments(parser, ["report", "runs/a", "--output-dir", "out", "stray=1"])
