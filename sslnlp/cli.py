"""The command line: every `sslnlp SUBCOMMAND ...`, each a thin shell over a library function.

    sslnlp pretrain recipes/tiny-cpu.yaml --output-dir runs/tiny training.max_steps=100
    sslnlp pretrain --help                      # every config key with its default and meaning
    sslnlp prepare recipes/cram-cpu.yaml --output-dir data/cram-prepared    # tokenize + pack once, into shards
    sslnlp tokenizer corpus.jsonl.gz --output-dir runs/tok --kind bpe --vocab-size 32000
    sslnlp probe recipes/evaluate/sst2.yaml model_name_or_path=runs/tiny --output-dir runs/tiny/probe
    sslnlp finetune recipes/evaluate/sst2.yaml model_name_or_path=runs/tiny
    sslnlp report runs/tiny runs/other --output-dir runs/comparison    # charts and a summary table, overlaid
    sslnlp push runs/tiny me/tiny-bert
    accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m sslnlp pretrain recipes/tiny-cpu.yaml

Commands that run a recipe (pretrain, prepare, probe, finetune) take `[RECIPE] key=value ...` through one helper
(``load_command_config``); every command that writes takes ``--output-dir`` (``--output`` still works, with a
deprecation notice; for a recipe command ``output_dir=DIR`` is the same setting). User mistakes (bad config, bad
corpus, bad model) end with one line `sslnlp: error: ...` and exit status 2; `--debug` (or SSLNLP_DEBUG=1) shows the
full traceback instead.

The only room that imports every other; nothing imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

COMMON_FLAGS = (("--debug", "show full tracebacks for errors"),
                ("--quiet", "warnings and errors only (the run directory's train.log still gets everything)"),
                ("--verbose", "also every library's INFO lines, with timestamps"))


def config_epilog(cls) -> str:
    from sslnlp.config import describe

    lines = ["config keys (set in the recipe YAML or as key=value; default, meaning):"]
    for key, default, help_text in describe(cls):
        lines.append(f"  {key} = {default}")
        lines.extend("      " + line for line in textwrap.wrap(help_text, 100))
    return "\n".join(lines)


class DeprecatedOutput(argparse.Action):
    """``--output``: the old spelling of ``--output-dir``; works, and says so once."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"sslnlp: {option_string} is deprecated; use --output-dir (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_output_dir(parser: argparse.ArgumentParser, help_text: str, required: bool = False) -> None:
    """The one spelling of where a command writes, plus the deprecated ``--output``."""
    parser.add_argument("--output-dir", dest="output_dir", default=None, metavar="DIR", help=help_text)
    parser.add_argument("--output", dest="output_dir", action=DeprecatedOutput, help=argparse.SUPPRESS)
    parser.set_defaults(output_dir_required=required)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--debug, --quiet, --verbose: accepted before or after the command (default=SUPPRESS keeps the top-level
    parser's value when the subcommand's flag is absent)."""
    for flag, help_text in COMMON_FLAGS:
        parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)


def add_recipe_command(commands, name: str, help_text: str, config_class, output_help: str, *, required: bool = False,
                       recipe_help: str = "recipe YAML (optional: defaults otherwise)"):
    """A command of the form `sslnlp NAME [RECIPE] key=value ... [--output-dir DIR]`."""
    command = commands.add_parser(name, help=help_text, epilog=config_epilog(config_class),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument("recipe", nargs="?", help=recipe_help)
    command.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. training.max_steps=100")
    add_output_dir(command, output_help, required)
    add_common_arguments(command)
    return command


def make_parser() -> argparse.ArgumentParser:
    from sslnlp.config import EvaluateConfig, PretrainConfig
    from sslnlp.data.tokenizer import TOKENIZER_KINDS

    parser = argparse.ArgumentParser(prog="sslnlp", description="Self-supervised pretraining of language models.")
    add_common_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_recipe_command(commands, "pretrain", "pretrain a model (masked LM, next-token, ELECTRA, SimCSE, ...)",
                       PretrainConfig, "the run directory (same as output_dir=DIR)")
    prepare = add_recipe_command(commands, "prepare", "tokenize and pack a recipe's corpus once into Arrow shards "
                                 "(train from them with data.train_files=DIR)", PretrainConfig,
                                 "directory to write (an interrupted prepare there resumes)", required=True,
                                 recipe_help="the pretraining recipe YAML the shards are for")
    prepare.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (default: every core)")
    prepare.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard file (default 16,777,216)")
    for name, help_text in (("probe", "linear probes of a checkpoint's frozen representations on labelled tasks"),
                            ("finetune", "fine-tune a checkpoint on labelled tasks (several seeds)")):
        add_recipe_command(commands, name, help_text, EvaluateConfig, "where results.json / results.md go (same "
                           "as output_dir=DIR)", recipe_help="evaluation recipe YAML (see recipes/evaluate/)")

    tokenizer = commands.add_parser("tokenizer", help="train a tokenizer on a corpus")
    tokenizer.add_argument("files", nargs="+", help="corpus files or globs (.txt, .jsonl, .parquet, compressed, ...)")
    add_output_dir(tokenizer, "directory to save the tokenizer in", required=True)
    tokenizer.add_argument("--kind", choices=TOKENIZER_KINDS, default="wordpiece", help="tokenizer model")
    tokenizer.add_argument("--decoder", action="store_true", help="for a decoder (next-token objective): no mask "
                           "token and nothing around a sequence (bpe/unigram); the default is an encoder tokenizer "
                           "(mask token, cls/sep)")
    tokenizer.add_argument("--vocab-size", type=int, default=8192, help="target vocabulary size, rounded up to a "
                           "multiple of 64")
    tokenizer.add_argument("--min-frequency", type=int, default=2, help="minimum count for a merge (wordpiece/bpe)")
    tokenizer.add_argument("--max-documents", type=int, default=None, help="read at most this many documents")
    tokenizer.add_argument("--text-field", default="text", help="field holding the text in JSON/Parquet/CSV records")
    add_common_arguments(tokenizer)

    report = commands.add_parser("report", help="an HTML page and PNG charts of one or more runs (loss, learning "
                                 "rate, throughput, probe scores), overlaid")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output directories of sslnlp pretrain runs")
    add_output_dir(report, "where to write index.html, the PNGs and report.json (default: RUN_DIR/report for one "
                   "run, ./report for several)")
    report.add_argument("--label", action="append", default=None, help="a legend name per run, in order (default: "
                        "the directory names)")
    report.add_argument("--results", action="append", default=[], help="results.json of sslnlp probe / finetune "
                        "(default: found beside each run)")
    report.add_argument("--title", default=None)
    add_common_arguments(report)

    push = commands.add_parser("push", help="push a finished run (model, tokenizer, metrics, model card) to the Hub")
    push.add_argument("run_dir", metavar="RUN_DIR", help="output directory of a finished `sslnlp pretrain`")
    push.add_argument("repo_id", help="Hub repository, 'owner/name' or 'name' (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    push.add_argument("--results", default=None, help="results.json of `sslnlp probe` / `sslnlp finetune` to show "
                      "in the model card (default: RUN_DIR/results.json)")
    push.add_argument("--with-checkpoint", action="store_true", help="also push the newest checkpoint as "
                      "last-checkpoint/, so training can resume from the Hub")
    push.add_argument("--message", default=None, help="commit message")
    push.add_argument("--max-attempts", type=int, default=5, help="tries; transient failures are retried with backoff")
    add_common_arguments(push)
    return parser


def output_dir_of(args: argparse.Namespace) -> str | None:
    """``--output-dir`` (or the deprecated ``--output``); a one-line error when the command needs it and it is absent."""
    if args.output_dir is None and args.output_dir_required:
        raise ValueError(f"sslnlp {args.command} needs --output-dir DIR (where to write)")
    return args.output_dir


def load_command_config(config_class, args: argparse.Namespace):
    """The config of `sslnlp COMMAND [RECIPE] key=value ... [--output-dir DIR]`: the recipe, then the overrides, then
    ``--output-dir`` as ``output_dir=`` (a first argument with ``=`` and no .yaml ending is an override)."""
    from sslnlp.config import load_config

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        recipe, overrides = None, [recipe] + overrides  # no recipe, only overrides
    if args.output_dir is not None:  # prepare reads no output_dir from its config: the shards go to --output-dir
        overrides.append(f"output_dir={args.output_dir}")
    return load_config(config_class, recipe, overrides)


def run_pretrain(args: argparse.Namespace) -> None:
    from sslnlp import pretrain
    from sslnlp.config import PretrainConfig

    pretrain(load_command_config(PretrainConfig, args))


def run_prepare(args: argparse.Namespace) -> None:
    from sslnlp import prepare
    from sslnlp.config import PretrainConfig
    from sslnlp.console import logger

    output = output_dir_of(args)
    options = {"num_proc": args.num_proc} | ({"shard_tokens": args.shard_tokens} if args.shard_tokens else {})
    manifest = prepare(load_command_config(PretrainConfig, args), output, **options)
    train = manifest["splits"]["train"]
    logger.info(f"prepared {output}: {train['blocks']:,} training blocks ({train['tokens']:,} tokens, "
                f"{train['documents']:,} documents) in {len(train['shards'])} shards; train with "
                f"data.train_files={output}")


def run_probe(args: argparse.Namespace) -> None:
    from sslnlp import probe
    from sslnlp.config import EvaluateConfig

    probe(load_command_config(EvaluateConfig, args))


def run_finetune(args: argparse.Namespace) -> None:
    from sslnlp import finetune
    from sslnlp.config import EvaluateConfig

    finetune(load_command_config(EvaluateConfig, args))


def run_tokenizer(args: argparse.Namespace) -> None:
    """Train a tokenizer on the files and print one summary line."""
    from sslnlp.data.corpus import load_corpus
    from sslnlp.data.tokenizer import train_tokenizer

    output = output_dir_of(args)
    documents_read = 0

    def counted_documents():
        nonlocal documents_read
        for document in load_corpus(args.files[0] if len(args.files) == 1 else [Path(f) for f in args.files],
                                    text_field=args.text_field):
            documents_read += 1
            yield document

    tokenizer = train_tokenizer(counted_documents(), output, kind=args.kind, encoder=not args.decoder,
                                vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                                max_documents=args.max_documents)
    print(f"trained {args.kind} tokenizer ({'decoder' if args.decoder else 'encoder'}) on {documents_read} documents: "
          f"{len(tokenizer)} tokens -> {output}")


def run_report(args: argparse.Namespace) -> None:
    from sslnlp import write_report
    from sslnlp.console import logger

    if args.label and len(args.label) != len(args.run_dirs):
        raise ValueError(f"--label given {len(args.label)} times for {len(args.run_dirs)} runs; give one per run or none")
    page = write_report(args.run_dirs, output_dir_of(args), labels=args.label, results=args.results, title=args.title)
    logger.info(f"report: {page}")


def run_push(args: argparse.Namespace) -> None:
    """`sslnlp push RUN_DIR REPO_ID [--private] [--revision R] ...` (token: HF_TOKEN or `hf auth login`)."""
    from sslnlp import push_to_hub
    from sslnlp.config import ConfigError, HubConfig

    try:
        HubConfig(push_to_hub=True, hub_model_id=args.repo_id, hub_revision=args.revision).check()
    except ConfigError as error:
        raise ValueError(str(error).replace("hub.hub_model_id", "REPO_ID").replace("hub.hub_revision", "--revision")) from None
    outcome = push_to_hub(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                          results=args.results, include_checkpoint=args.with_checkpoint, commit_message=args.message,
                          max_attempts=args.max_attempts)
    print(f"pushed {len(outcome['files'])} files of {args.run_dir} to {args.repo_id} "
          f"({outcome['attempts']} attempt{'s' if outcome['attempts'] > 1 else ''}): {outcome['commit_url']}")


COMMANDS = {"pretrain": run_pretrain, "prepare": run_prepare, "tokenizer": run_tokenizer, "probe": run_probe,
            "finetune": run_finetune, "report": run_report, "push": run_push}


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse, letting a recipe command's ``key=value`` overrides (and its recipe) come after flags such as
    ``--output-dir`` too: argparse alone takes positionals only before the first flag once a subcommand is chosen."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides"):
        if args.recipe is None and not args.overrides and extra[0].endswith((".yaml", ".yml")):
            args.recipe, extra = extra[0], extra[1:]
        args.overrides += [item for item in extra if "=" in item and not item.startswith("-")]
        extra = [item for item in extra if "=" not in item or item.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    from sslnlp.console import set_up_console
    from sslnlp.runtime import TrainingError

    parser = make_parser()
    args = parse_arguments(parser, argv)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if quiet and verbose:
        parser.error("--quiet and --verbose exclude each other")
    set_up_console("quiet" if quiet else "verbose" if verbose else "normal")
    debug = getattr(args, "debug", False) or os.environ.get("SSLNLP_DEBUG") == "1"
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError, TrainingError) as error:
        if debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"sslnlp: error: {message}", file=sys.stderr)
        sys.exit(2)
