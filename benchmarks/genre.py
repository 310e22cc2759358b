"""A second team task, of another kind than wordnet_supersense: the genre of a 32-word passage from documents that
pretraining never reads, scored with learning curves for a model, its random-weight twin and TF-IDF.

    python benchmarks/genre.py --model runs/bench-curves/cram         # derive the task, then probe + fine-tune curves
    python benchmarks/genre.py --model DIR --derive-only              # the task files only

wordnet_supersense asks what kind of thing a noun gloss defines (lexical: TF-IDF alone reaches 74.7). This task asks
where a passage comes from, which is what an objective that teaches topic and style should capture. TEAM-LOCAL: reads
../shared/corpora/valid.jsonl.gz (documents held out of pretraining: 1% by hash of id) and writes the task under
--output (never into the repository). Sources are grouped into five genres (GENRES below); Austen's novels are left
out because the held-out file has 10 of their documents, too few for a test split of their own. Each document is cut
into consecutive 32-word passages (a shorter tail of at least 16 words kept). Documents, not passages, are split: within
each genre, documents sorted by a hash of their id go one in ten to test, one in ten to validation, the rest to train,
so every genre has documents on each side and no document's passages are on two sides. Each genre keeps at most
600 train and 100 validation / test passages (a seeded sample), and the score is macro F1 over the genres
(the computing dictionaries have the fewest passages).

  1. derive the task (train / validation / test .jsonl with ``text`` and ``genre``);
  2. ``sslnlp probe`` and ``sslnlp finetune`` (benchmarks/recipes/evaluate/genre.yaml) with train_sizes and
     curve_seeds, the model beside its random twin and TF-IDF on the same subsets, fine-tuned with curves.py's
     small-size protocol;
  3. ``sslnlp report`` draws the curves (OUTPUT/eval/report/learning_curves.png).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from curves import CURVE_PROTOCOL, sslnlp  # noqa: E402  (the small-size fine-tuning protocol; one command runner)

HELD_OUT = ROOT.parent / "shared" / "corpora" / "valid.jsonl.gz"
RECIPE = ROOT / "benchmarks" / "recipes" / "evaluate" / "genre.yaml"
GENRES = {
    "scripture": ("bible_kjv", "bible_web"),
    "commentary": ("spurgeon_treasury_of_david", "matthew_henry_concise", "scofield_notes_1917"),
    "dictionary": ("gcide", "devils_dictionary"),
    "computing_dictionary": ("foldoc", "jargon"),
    "software_documentation": ("linux_kernel_docs", "python_docs", "perl_docs", "debian_reference", "gnu_standards"),
}
PASSAGE_WORDS = 32
CAPS = {"train": 600, "validation": 100, "test": 100}


def passages(text: str) -> list[str]:
    words = text.split()
    pieces = (words[start:start + PASSAGE_WORDS] for start in range(0, len(words), PASSAGE_WORDS))
    return [" ".join(piece) for piece in pieces if len(piece) >= PASSAGE_WORDS // 2]


def derive(output: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write train / validation / test .jsonl ({"text", "genre", "document"}) under ``output``; return the counts per
    split and genre."""
    genre_of = {source: genre for genre, sources in GENRES.items() for source in sources}
    documents = defaultdict(list)
    with gzip.open(HELD_OUT, "rt", encoding="utf-8") as handle:
        for line in handle:
            document = json.loads(line)
            if document["source"] in genre_of:
                documents[genre_of[document["source"]]].append(document)
    rows = {split: [] for split in CAPS}
    counts = {split: {} for split in CAPS}
    rng = random.Random(seed)
    for genre in GENRES:
        ordered = sorted(documents[genre], key=lambda d: hashlib.sha256(d["id"].encode()).hexdigest())
        by_split = {split: [] for split in CAPS}
        for index, document in enumerate(ordered):
            split = "test" if index % 10 == 0 else "validation" if index % 10 == 1 else "train"
            by_split[split] += [{"text": text, "genre": genre, "document": document["id"]}
                                for text in passages(document["text"])]
        for split, examples in by_split.items():
            kept = rng.sample(examples, CAPS[split]) if len(examples) > CAPS[split] else examples
            rows[split] += kept
            counts[split][genre] = len(kept)
    output.mkdir(parents=True, exist_ok=True)
    for split, examples in rows.items():
        rng.shuffle(examples)
        (output / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in examples))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model to score (e.g. a cram-cpu run)")
    parser.add_argument("--output", default="runs/bench-genre", help="where the task and the results go")
    parser.add_argument("--sizes", default='[64, 256, "all"]', help="train_sizes, as JSON")
    parser.add_argument("--seeds", default="[0, 1, 2]", help="curve_seeds, as JSON")
    parser.add_argument("--derive-only", action="store_true")
    args = parser.parse_args()
    output = Path(args.output)
    counts = derive(output / "genre")
    print(f"genre passages: {json.dumps(counts)}", flush=True)
    if args.derive_only:
        return
    task = [{"name": "genre", "text_field": "text", "label_field": "genre", "metric": "macro_f1",
             "label_names": list(GENRES),
             **{f"{split}_file": str(output / "genre" / f"{split}.jsonl") for split in CAPS}}]
    common = [str(RECIPE), f"model_name_or_path={args.model}", f"tasks={json.dumps(task)}",
              f"train_sizes={args.sizes}", f"curve_seeds={args.seeds}", "--output-dir", str(output / "eval")]
    sslnlp("probe", *common)
    sslnlp("finetune", *common, *CURVE_PROTOCOL, "finetune.save_model=false")
    sslnlp("report", str(output / "eval"), "--output-dir", str(output / "eval" / "report"),
           "--title", "Genre of held-out passages")
    print((output / "eval" / "results.md").read_text())


if __name__ == "__main__":
    main()
