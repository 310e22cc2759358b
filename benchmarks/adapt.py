"""What adapting a checkpoint buys: domain- and task-adaptive pretraining (DAPT, TAPT), with and without vocabulary
extension, against the unadapted checkpoint and against training from scratch on the domain for the same compute.

    python benchmarks/adapt.py                       # every stage (~90 min on 2 cores); stages already done are kept
    python benchmarks/adapt.py --lr-sweep            # first: the continuation learning rate, by held-out losses

TEAM-LOCAL: reads ../shared/corpora (team machines only) and writes under --output. The "domain" is the dictionaries
of the team corpus (GCIDE / Webster 1913, The Devil's Dictionary, FOLDOC, the Jargon File: 21,682 documents); the
"general" text is everything else (scripture, commentaries, Austen, software manuals). The held-out file is split
the same way. The task is wordnet_supersense (noun glosses: dictionary text), scored with
benchmarks/recipes/evaluate/cram-wordnet.yaml.

Budgets are optimizer steps of cram-cpu's batch (32 blocks of 128 tokens), not seconds, so every arm gets the same
compute whatever else the machine runs; wall minutes are reported beside them.

  1. data: the corpus and the held-out file split into general / domain .jsonl under OUTPUT/data.
  2. general: recipes/cram-cpu.yaml on the general text for --general-steps -> OUTPUT/general.
  3. arms, each continuing general with recipes/adapt-cpu.yaml for --adapt-steps per stage, 20% of the documents
     replayed from the general text, general-domain held-out loss measured before and after:
       dapt (the domain), tapt (wordnet_supersense's train glosses: data.task_texts), dapt+tapt (tapt after dapt),
       each without and with tokenizer.extend_vocabulary (learned at the first stage), and dapt without replay
       (forgetting's reference).
  4. scratch: recipes/cram-cpu.yaml on the domain for --general-steps + 2 x --adapt-steps (the compute of the
     general checkpoint plus dapt+tapt).
  5. evaluation: the mean-pooled probe and kNN of every model (the random-weight floor once), fine-tuning
     (--finetune-seeds) for the models in FINETUNED; one table (OUTPUT/adapt.md) and OUTPUT/adapt.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from curves import sslnlp  # noqa: E402  (one command runner for the benchmarks)

CORPORA = ROOT.parent / "shared" / "corpora"
EVALUATION_RECIPE = ROOT / "benchmarks" / "recipes" / "evaluate" / "cram-wordnet.yaml"
TASK_TEXTS = f"data.task_texts={EVALUATION_RECIPE}#wordnet_supersense"
DOMAIN_SOURCES = {"gcide", "devils_dictionary", "foldoc", "jargon"}
REPLAY_SHARE = 0.2
FINETUNED = ("general", "dapt+tapt", "dapt+tapt+vocab", "scratch")


def split_corpora(folder: Path) -> dict[str, Path]:
    """general / domain .jsonl of the training corpus and of the held-out file."""
    paths = {name: folder / f"{name}.jsonl" for name in ("general", "domain", "general-valid", "domain-valid")}
    if all(path.is_file() for path in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for source, suffix in ((lzma.open(CORPORA / "train.jsonl.xz", "rt", encoding="utf-8"), ""),
                           (gzip.open(CORPORA / "valid.jsonl.gz", "rt", encoding="utf-8"), "-valid")):
        with source, open(paths["general" + suffix], "w") as general, open(paths["domain" + suffix], "w") as domain:
            for line in source:
                (domain if json.loads(line)["source"] in DOMAIN_SOURCES else general).write(line)
    return paths


def pretrain(output: Path, recipe: str, *overrides: str) -> dict:
    """One pretraining run (skipped when its summary exists); returns summary.json with its wall minutes."""
    if not (output / "summary.json").is_file():
        started = time.perf_counter()
        sslnlp("pretrain", recipe, *overrides, "evaluation.probe_task={}", "--output-dir", output, "--quiet")
        (output / "wall_minutes").write_text(f"{(time.perf_counter() - started) / 60:.2f}")
    return read_summary(output)


def read_summary(output: Path) -> dict:
    """A finished run's summary.json with its wall minutes."""
    summary = json.loads((output / "summary.json").read_text())
    summary["wall_minutes"] = float((output / "wall_minutes").read_text()) if (output / "wall_minutes").is_file() else None
    return summary


def scratch_overrides(data: dict, train: Path, steps: int) -> list[str]:
    return [f"data.train_files={train}", f"data.validation_files={data['domain-valid']}",
            f"evaluation.general_validation_files={data['general-valid']}", "data.dataset_config_name=null", "data.shuffle_documents=true", "training.max_time=0",
            f"training.max_steps={steps}"]


def adapt_overrides(data: dict, start: Path, steps: int, replay: bool = True, lr: float | None = None) -> list[str]:
    values = [f"model.model_name_or_path={start}", f"data.validation_files={data['domain-valid']}",
              f"evaluation.general_validation_files={data['general-valid']}", "training.max_time=0",
              f"training.max_steps={steps}", "data.dataset_config_name=null"]
    values += ([f"data.replay_files={data['general']}", f"data.replay_share={REPLAY_SHARE}"] if replay
               else ["data.replay_files=null", "data.replay_share=0"])
    if lr:
        values.append(f"training.learning_rate={lr}")
    return values


def arms(output: Path, data: dict, general: Path, steps: int, extension: int) -> dict[str, Path]:
    """Every adapted model (name -> its directory)."""
    recipe = "recipes/adapt-cpu.yaml"
    domain = [f"data.train_files={data['domain']}"]
    made = {}
    for vocab in (False, True):
        suffix = "+vocab" if vocab else ""
        extend = [f"tokenizer.extend_vocabulary={extension if vocab else 'null'}"]
        made["dapt" + suffix] = output / f"dapt{suffix}"
        pretrain(made["dapt" + suffix], recipe, *adapt_overrides(data, general, steps), *domain, *extend)
        made["tapt" + suffix] = output / f"tapt{suffix}"
        pretrain(made["tapt" + suffix], recipe, *adapt_overrides(data, general, steps), TASK_TEXTS, *extend)
        made["dapt+tapt" + suffix] = output / f"dapt+tapt{suffix}"
        pretrain(made["dapt+tapt" + suffix], recipe, *adapt_overrides(data, made["dapt" + suffix], steps), TASK_TEXTS,
                 "tokenizer.extend_vocabulary=null")  # the vocabulary was extended (or not) at the DAPT stage
    made["dapt, no replay"] = output / "dapt-no-replay"
    pretrain(made["dapt, no replay"], recipe, *adapt_overrides(data, general, steps, replay=False), *domain,
             "tokenizer.extend_vocabulary=null")
    return made


def evaluate(output: Path, models: dict[str, Path], seeds: list[int]) -> dict:
    """Probe + kNN for every model (the random-weight floor with the general model's probe), fine-tuning (no twin:
    the same architecture's random-weight fine-tune is in the learning-curves report) for FINETUNED."""
    scores = {}
    for name, model in models.items():
        folder = output / "eval" / name.replace(", ", "-").replace(" ", "-")
        results = folder / "results.json"

        def row() -> dict:
            return json.loads(results.read_text())["tasks"]["wordnet_supersense"] if results.is_file() else {}

        if "probe" not in row():
            sslnlp("probe", EVALUATION_RECIPE, f"model_name_or_path={model}",
                   f"random_baseline={'true' if name == 'general' else 'false'}", "--output-dir", folder)
        if name in FINETUNED and "finetune" not in row():
            sslnlp("finetune", EVALUATION_RECIPE, f"model_name_or_path={model}", "random_baseline=false",
                   f"finetune.seeds={json.dumps(seeds)}", "finetune.save_model=false", "--output-dir", folder)
        scores[name] = row()
    return scores


def table(models: dict[str, Path], summaries: dict[str, dict], scores: dict) -> str:
    lines = ["| model | steps (this stage) | wall min | probe | kNN | fine-tune median (min-max, seeds) | domain held-out "
             "loss | general held-out loss before -> after | tokens per word (domain) |", "|---|" + "---:|" * 8]
    for name in models:
        summary, row = summaries[name], scores.get(name, {})
        probe = row.get("probe", {})
        knn = probe.get("knn", {})
        tune = row.get("finetune", {})
        fine = (f"{100 * tune['median']['accuracy']:.1f} ({100 * tune['min']['accuracy']:.1f}-"
                f"{100 * tune['max']['accuracy']:.1f}, {len(tune.get('seeds', []))})" if tune else "")
        before, after = summary.get("general_eval_loss_before"), summary.get("general_eval_loss")
        general = f"{before:.3f} -> {after:.3f}" if before is not None and after is not None else ""
        extension = summary.get("vocabulary_extension") or {}
        words = (f"{extension['tokens_per_word_before']:.3f} -> {extension['tokens_per_word_after']:.3f}"
                 if extension else "")
        lines.append(f"| {name} | {summary['steps']} | {summary.get('wall_minutes') or 0:.1f} | "
                     f"{100 * probe.get('test', {}).get('accuracy', float('nan')):.1f} | "
                     f"{100 * knn.get('test', {}).get('accuracy', float('nan')):.1f} | {fine} | "
                     f"{summary.get('eval_loss', float('nan')):.3f} | {general} | {words} |")
    return "\n".join(lines)


def lr_sweep(output: Path, data: dict, general: Path, steps: int, rates: list[float]) -> None:
    """DAPT at each learning rate: the domain's and the general text's held-out losses after --adapt-steps."""
    print("| learning rate | domain held-out loss | general held-out loss before -> after |\n|---:|---:|---:|")
    for rate in rates:
        summary = pretrain(output / "lr-sweep" / f"lr-{rate:g}", "recipes/adapt-cpu.yaml",
                           *adapt_overrides(data, general, steps, lr=rate), f"data.train_files={data['domain']}",
                           "tokenizer.extend_vocabulary=null")
        print(f"| {rate:g} | {summary['eval_loss']:.3f} | {summary['general_eval_loss_before']:.3f} -> "
              f"{summary['general_eval_loss']:.3f} |", flush=True)


def extension_sizes(data: dict, general: Path, sizes: list[int], documents: int = 20000) -> None:
    """Tokens per word of the domain's held-out text under the general checkpoint's tokenizer extended by each
    number of entries (learned from the first ``documents`` domain training documents, as the arms do)."""
    import itertools

    from sslnlp.data.tokenizer import load_tokenizer
    from sslnlp.data.vocabulary import extend_tokenizer, tokens_per_word

    def texts(path: Path):
        with open(path) as handle:
            yield from (json.loads(line)["text"] for line in handle)

    tokenizer = load_tokenizer(str(general))
    training = list(itertools.islice(texts(data["domain"]), documents))
    held_out = list(texts(data["domain-valid"]))
    before = tokens_per_word(tokenizer, held_out)
    print(f"| new entries | tokens per word, domain held-out (general tokenizer: {before:.3f}) | change |\n|---:|---:|---:|")
    for size in sizes:
        extended = extend_tokenizer(tokenizer, training, size, min_frequency=5).tokenizer
        after = tokens_per_word(extended, held_out)
        print(f"| {size:,} | {after:.3f} | {100 * (after / before - 1):+.1f}% |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/bench-adapt")
    parser.add_argument("--general-steps", type=int, default=1200)
    parser.add_argument("--adapt-steps", type=int, default=300)
    parser.add_argument("--extension", type=int, default=1024, help="tokenizer.extend_vocabulary of the +vocab arms")
    parser.add_argument("--finetune-seeds", default="[0, 1, 2]")
    parser.add_argument("--lr-sweep", default=None, help="learning rates to compare for DAPT (JSON list); then stop")
    parser.add_argument("--extension-sizes", default=None, help="tokens per word for these extension sizes (JSON "
                                                                "list) with the general tokenizer, no training; then stop")
    args = parser.parse_args()
    output = Path(args.output)
    data = split_corpora(output / "data")
    summaries = {"general": pretrain(output / "general", "recipes/cram-cpu.yaml",
                                     *scratch_overrides(data, data["general"], args.general_steps))}
    if args.extension_sizes:
        extension_sizes(data, output / "general", json.loads(args.extension_sizes))
        return
    if args.lr_sweep:
        lr_sweep(output, data, output / "general", args.adapt_steps, json.loads(args.lr_sweep))
        return
    models = {"general": output / "general", **arms(output, data, output / "general", args.adapt_steps,
                                                     args.extension)}
    models["scratch"] = output / "scratch"
    summaries["scratch"] = pretrain(models["scratch"], "recipes/cram-cpu.yaml",
                                    *scratch_overrides(data, data["domain"], args.general_steps + 2 * args.adapt_steps))
    for name, model in models.items():
        summaries.setdefault(name, read_summary(model))
    scores = evaluate(output, models, json.loads(args.finetune_seeds))
    text = table(models, summaries, scores)
    (output / "adapt.md").write_text(text + "\n")
    (output / "adapt.json").write_text(json.dumps({"summaries": summaries, "scores": scores}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
