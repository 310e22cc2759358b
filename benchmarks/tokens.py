"""A token-level task nobody labels by hand: restoring the capitalisation of lowercased sentences, derived from the
team's held-out corpus text, probed and fine-tuned for a model and its random-weight twin.

    python benchmarks/tokens.py --model runs/bench-curves/cram       # derive the task, then probe + fine-tune
    python benchmarks/tokens.py --model DIR --derive-only            # the task files only

TEAM-LOCAL: reads ../shared/corpora/valid.jsonl.gz (documents held out of pretraining: 1% by hash of id) and writes
the task under --output (never into the repository). Each sentence becomes its words (runs of letters, digits and
apostrophes) and punctuation marks, lowercased; each word's tag is its original case: ``Cap`` (first letter
upper), ``UPPER`` (two or more letters, all upper) or ``lower`` (everything else, punctuation included). Documents,
not sentences, are split 80/10/10 by a hash of their id, so no document's sentences are on both sides. Scored by
word accuracy and macro F1 over the three tags (benchmarks/recipes/evaluate/capitalisation.yaml): the probe reads
each word's first sub-token of a frozen model; fine-tuning trains AutoModelForTokenClassification, 3 seeds.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ROOT.parent / "shared" / "corpora" / "valid.jsonl.gz"
RECIPE = ROOT / "benchmarks" / "recipes" / "evaluate" / "capitalisation.yaml"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'‘“(]?[A-Z])")
WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*|[^\sA-Za-z0-9]")


def case_tag(word: str) -> str:
    letters = [c for c in word if c.isalpha()]
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        return "UPPER"
    return "Cap" if letters and word[0].isupper() else "lower"


def split_of(document_id: str) -> str:
    bucket = int(hashlib.sha256(document_id.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def derive(output: Path, min_words: int = 5, max_words: int = 50) -> dict[str, int]:
    """Write train / validation / test .jsonl ({"words", "tags"} per sentence) under ``output``; return the counts."""
    rows = {"train": [], "validation": [], "test": []}
    with gzip.open(HELD_OUT, "rt", encoding="utf-8") as handle:
        for line in handle:
            document = json.loads(line)
            for paragraph in document["text"].split("\n"):
                for sentence in SENTENCE_END.split(paragraph.replace("¶", " ")):
                    words = WORD.findall(sentence)
                    if min_words <= len(words) <= max_words:
                        rows[split_of(document["id"])].append(
                            {"words": [w.lower() for w in words], "tags": [case_tag(w) for w in words]})
    output.mkdir(parents=True, exist_ok=True)
    for split, examples in rows.items():
        (output / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in examples))
    return {split: len(examples) for split, examples in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model to score (e.g. a cram-cpu run)")
    parser.add_argument("--output", default="runs/bench-tokens", help="where the task and the results go")
    parser.add_argument("--derive-only", action="store_true")
    args = parser.parse_args()
    task_dir = Path(args.output) / "capitalisation"
    counts = derive(task_dir)
    tags = [tag for line in (task_dir / "train.jsonl").read_text().splitlines() for tag in json.loads(line)["tags"]]
    shares = {tag: round(tags.count(tag) / len(tags), 3) for tag in ("lower", "Cap", "UPPER")}
    print(f"capitalisation: {counts} sentences; train tags {shares} (tagging every word 'lower' scores "
          f"{shares['lower']:.3f} accuracy)", flush=True)
    if args.derive_only:
        return
    task = {"name": "capitalisation", "kind": "token", "text_field": "words", "label_field": "tags",
            "metric": "macro_f1", "label_names": ["lower", "Cap", "UPPER"], "max_seq_length": 96,
            **{f"{split}_file": str(task_dir / f"{split}.jsonl") for split in ("train", "validation", "test")}}
    overrides = [f"model_name_or_path={args.model}", f"tasks={json.dumps([task])}",
                 "--output-dir", str(Path(args.output) / "eval")]
    for command in ("probe", "finetune"):
        subprocess.run([sys.executable, "-m", "sslnlp", command, str(RECIPE), *overrides], cwd=ROOT, check=True)
    print((Path(args.output) / "eval" / "results.md").read_text())


if __name__ == "__main__":
    main()
