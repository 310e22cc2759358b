"""Command line: `sslnlp pretrain|prepare|probe|finetune|tokenizer|push|report ...`, each a thin shell over a library function.

    sslnlp pretrain recipes/tiny-cpu.yaml output_dir=runs/tiny training.max_steps=100
    sslnlp pretrain --help                      # every config key with its default and meaning
    sslnlp probe recipes/evaluate/sst2.yaml model_name_or_path=runs/tiny-cpu
    sslnlp finetune recipes/evaluate/sst2.yaml model_name_or_path=runs/tiny-cpu
    sslnlp prepare recipes/cram-cpu.yaml --output data/cram-prepared     # tokenize + pack once, into shards
    sslnlp tokenizer corpus.jsonl.gz --output-dir runs/tok --kind bpe --vocab-size 32000
    sslnlp report runs/tiny-cpu runs/other --output runs/comparison    # charts and a summary table, overlaid
    accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m sslnlp pretrain recipes/tiny-cpu.yaml

User mistakes (bad config, bad corpus, bad model) end with one line `sslnlp: error: ...` and exit status 2;
`--debug` (or SSLNLP_DEBUG=1) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap


def _config_epilog(cls) -> str:
    from sslnlp.config import describe

    lines = ["config keys (set in the recipe YAML or as key=value; default, meaning):"]
    for key, default, help_text in describe(cls):
        lines.append(f"  {key} = {default}")
        lines.extend("      " + line for line in textwrap.wrap(help_text, 100))
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--debug, --quiet, --verbose: accepted before or after the command (default=SUPPRESS keeps the top-level
    parser's value when the subcommand's flag is absent)."""
    for flag, help_text in (("--debug", "show full tracebacks for errors"),
                            ("--quiet", "warnings and errors only (the run directory's train.log still gets everything)"),
                            ("--verbose", "also every library's INFO lines, with timestamps")):
        parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)


def make_parser() -> argparse.ArgumentParser:
    from sslnlp.config import EvaluateConfig, PretrainConfig
    from sslnlp.tokenizer import add_tokenizer_arguments

    parser = argparse.ArgumentParser(prog="sslnlp", description="Self-supervised pretraining of language models.")
    add_common_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser("pretrain", help="pretrain a model (masked-LM or next-token)",
                                   epilog=_config_epilog(PretrainConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    pretrain.add_argument("recipe", nargs="?", help="recipe YAML (optional: defaults otherwise)")
    pretrain.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. training.max_steps=100")
    add_common_arguments(pretrain)
    for name, help_text in (("probe", "linear probes of a checkpoint's frozen representations on labelled tasks"),
                            ("finetune", "fine-tune a checkpoint on labelled tasks (several seeds)")):
        evaluate = commands.add_parser(name, help=help_text, epilog=_config_epilog(EvaluateConfig),
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        evaluate.add_argument("recipe", nargs="?", help="evaluation recipe YAML (see recipes/evaluate/)")
        evaluate.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model_name_or_path=runs/x")
        add_common_arguments(evaluate)
    prepare = commands.add_parser("prepare", help="tokenize and pack a recipe's corpus once into Arrow shards "
                                  "(train from them with data.train_files=OUTPUT)",
                                  epilog=_config_epilog(PretrainConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    prepare.add_argument("recipe", nargs="?", help="the pretraining recipe YAML the shards are for")
    prepare.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.max_seq_length=512")
    prepare.add_argument("--output", required=True, help="directory to write (an interrupted prepare there resumes)")
    prepare.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (default: every core)")
    prepare.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard file (default 16,777,216)")
    add_common_arguments(prepare)
    tokenizer = commands.add_parser("tokenizer", help="train a tokenizer on a corpus")
    add_tokenizer_arguments(tokenizer)
    add_common_arguments(tokenizer)
    from sslnlp.hub import add_push_arguments

    report = commands.add_parser("report", help="an HTML page and PNG charts of one or more runs (loss, learning "
                                 "rate, throughput, probe scores), overlaid")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output directories of sslnlp pretrain runs")
    report.add_argument("--output", default=None, help="where to write index.html, the PNGs and report.json (default: "
                        "RUN_DIR/report for one run, ./report for several)")
    report.add_argument("--label", action="append", default=None, help="a legend name per run, in order (default: "
                        "the directory names)")
    report.add_argument("--results", action="append", default=[], help="results.json of sslnlp probe / finetune "
                        "(default: found beside each run)")
    report.add_argument("--title", default=None)
    add_common_arguments(report)
    push = commands.add_parser("push", help="push a finished run (model, tokenizer, metrics, model card) to the Hub")
    add_push_arguments(push)
    add_common_arguments(push)
    return parser


def run_pretrain(args: argparse.Namespace) -> None:
    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.train import pretrain

    pretrain(load_config(PretrainConfig, *recipe_and_overrides(args)))


def recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        recipe, overrides = None, [recipe] + overrides  # no recipe, only overrides
    return recipe, overrides


def run_prepare(args: argparse.Namespace) -> None:
    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.console import logger
    from sslnlp.shards import DEFAULT_SHARD_TOKENS, prepare

    manifest = prepare(load_config(PretrainConfig, *recipe_and_overrides(args)), args.output, num_proc=args.num_proc,
                       shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS)
    train = manifest["splits"]["train"]
    logger.info(f"prepared {args.output}: {train['blocks']:,} training blocks ({train['tokens']:,} tokens, "
                f"{train['documents']:,} documents) in {len(train['shards'])} shards; train with "
                f"data.train_files={args.output}")


def run_report(args: argparse.Namespace) -> None:
    from sslnlp.console import logger
    from sslnlp.report import write_report

    if args.label and len(args.label) != len(args.run_dirs):
        raise ValueError(f"--label given {len(args.label)} times for {len(args.run_dirs)} runs; give one per run or none")
    page = write_report(args.run_dirs, args.output, labels=args.label, results=args.results, title=args.title)
    logger.info(f"report: {page}")


def main(argv: list[str] | None = None) -> None:
    from sslnlp.checkpoint import __name__ as _  # noqa: F401  (fail early if the package is broken)

    parser = make_parser()
    args = parser.parse_args(argv)
    from sslnlp.console import set_up_console

    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if quiet and verbose:
        parser.error("--quiet and --verbose exclude each other")
    set_up_console("quiet" if quiet else "verbose" if verbose else "normal")
    debug = getattr(args, "debug", False) or os.environ.get("SSLNLP_DEBUG") == "1"
    from sslnlp.tokenizer import run_tokenizer_command

    from sslnlp.runtime import TrainingError

    from sslnlp.hub import run_push_command

    from sslnlp.finetuning import run_finetune_command
    from sslnlp.probing import run_probe_command

    commands = {"pretrain": run_pretrain, "tokenizer": run_tokenizer_command, "push": run_push_command, "report": run_report, "prepare": run_prepare,
                "probe": run_probe_command, "finetune": run_finetune_command}
    try:
        commands[args.command](args)
    except (ValueError, OSError, TrainingError) as error:
        if debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"sslnlp: error: {message}", file=sys.stderr)
        sys.exit(2)
