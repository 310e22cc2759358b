"""Command line: `sslnlp pretrain|probe|finetune|tokenizer|push ...`, each a thin shell over a library function.

    sslnlp pretrain recipes/tiny-cpu.yaml output_dir=runs/tiny training.max_steps=100
    sslnlp pretrain --help                      # every config key with its default and meaning
    sslnlp probe recipes/evaluate/probe-wordnet.yaml model_name_or_path=runs/tiny-cpu
    sslnlp finetune recipes/evaluate/probe-wordnet.yaml model_name_or_path=runs/tiny-cpu
    sslnlp tokenizer corpus.jsonl.gz --output-dir runs/tok --kind bpe --vocab-size 32000
    accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m sslnlp pretrain recipes/tiny-cpu.yaml

User mistakes (bad config, bad corpus, bad model) end with one line `sslnlp: error: ...` and exit status 2;
`--debug` (or SSLNLP_DEBUG=1) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import logging
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


def make_parser() -> argparse.ArgumentParser:
    from sslnlp.config import EvaluateConfig, PretrainConfig
    from sslnlp.tokenizer import add_tokenizer_arguments

    parser = argparse.ArgumentParser(prog="sslnlp", description="Self-supervised pretraining of language models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser("pretrain", help="pretrain a model (masked-LM or next-token)",
                                   epilog=_config_epilog(PretrainConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    pretrain.add_argument("recipe", nargs="?", help="recipe YAML (optional: defaults otherwise)")
    pretrain.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. training.max_steps=100")
    pretrain.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    for name, help_text in (("probe", "linear probes of a checkpoint's frozen representations on labelled tasks"),
                            ("finetune", "fine-tune a checkpoint on labelled tasks (several seeds)")):
        evaluate = commands.add_parser(name, help=help_text, epilog=_config_epilog(EvaluateConfig),
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        evaluate.add_argument("recipe", nargs="?", help="evaluation recipe YAML (see recipes/evaluate/)")
        evaluate.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model_name_or_path=runs/x")
        evaluate.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    tokenizer = commands.add_parser("tokenizer", help="train a tokenizer on a corpus")
    add_tokenizer_arguments(tokenizer)
    tokenizer.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    from sslnlp.hub import add_push_arguments

    push = commands.add_parser("push", help="push a finished run (model, tokenizer, metrics, model card) to the Hub")
    add_push_arguments(push)
    push.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    return parser


def run_pretrain(args: argparse.Namespace) -> None:
    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.train import pretrain

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        recipe, overrides = None, [recipe] + overrides  # no recipe, only overrides
    pretrain(load_config(PretrainConfig, recipe, overrides))


def main(argv: list[str] | None = None) -> None:
    from sslnlp.checkpoint import __name__ as _  # noqa: F401  (fail early if the package is broken)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = make_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("SSLNLP_DEBUG") == "1"
    from sslnlp.tokenizer import run_tokenizer_command

    from sslnlp.runtime import TrainingError

    from sslnlp.hub import run_push_command

    from sslnlp.finetuning import run_finetune_command
    from sslnlp.probing import run_probe_command

    commands = {"pretrain": run_pretrain, "tokenizer": run_tokenizer_command, "push": run_push_command,
                "probe": run_probe_command, "finetune": run_finetune_command}
    try:
        commands[args.command](args)
    except (ValueError, OSError, TrainingError) as error:
        if debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"sslnlp: error: {message}", file=sys.stderr)
        sys.exit(2)
