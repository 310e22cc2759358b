"""Vocabulary extension: learn a domain's most useful new tokens and add them to an existing tokenizer's own
vocabulary (WordPiece pieces, byte-level BPE merges, Unigram pieces; never "added tokens", which bypass the model
and are matched before normalisation).

    extension = extend_tokenizer(tokenizer, domain_documents, new_tokens=2000)
    extension.tokenizer            # the extended tokenizer (old ids unchanged, new ids after every old one)
    extension.pieces               # {new id: the old ids the old tokenizer split it into} -> embedding initialisation

Which tokens: the words of the domain text (after the tokenizer's own normalizer and pre-tokenizer, so a word is
what the tokenizer sees: "Ġmitochondria" for byte-level BPE, "▁mitochondria" for Unigram) ranked by the tokens
they save per vocabulary entry they cost: frequency x (pieces - 1), per entry. Frequency alone picks words the
tokenizer already keeps whole; the length of a split alone picks rare oddities. frequency x (pieces - 1) is exactly
the reduction in the domain's token count (and so in tokens per word) that making the word one token brings, which
is what vocabulary extension is for; a WordPiece or Unigram word costs one entry, a BPE word of k pieces k - 1 (its
merges' intermediate pieces), so for BPE the ranking is by frequency.

How each kind takes a new whole-word token:
- WordPiece: the word enters the vocabulary as a word-initial piece; greedy longest-match-first takes it whole.
- BPE: merges that join its current pieces left to right are appended after every existing merge (lowest
  priority), with the intermediate tokens they create; an old word's merges fire first, so other words can only
  lose tokens. Words that a competing new merge still splits are merged again, then dropped if still split.
- Unigram: the piece gets a log-probability just above its current best segmentation's, so Viterbi prefers it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

EXTENDABLE_KINDS = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram"}
EXTENSION_FILE = "vocabulary_extension.json"
# A word that needs this many more passes of merges than one is dropped rather than chased.
BPE_MERGE_ROUNDS = 3


class VocabularyError(ValueError):
    """A user mistake about vocabulary extension: one line naming the setting and what to do."""


@dataclass
class Extension:
    """An extended tokenizer and where each new token came from."""

    tokenizer: object
    kind: str
    pieces: dict[int, list[int]]  # new id -> the old ids its text was split into (for embedding initialisation)
    words: list[dict] = field(default_factory=list)  # per new word: token, id, frequency, old pieces
    tokens_per_word_before: float = 0.0
    tokens_per_word_after: float = 0.0
    documents: int = 0
    words_seen: int = 0

    def report(self) -> dict:
        """What summary.json and the log say about the extension."""
        return {"kind": self.kind, "new_tokens": len(self.pieces), "new_words": len(self.words),
                "documents": self.documents, "words_read": self.words_seen,
                "tokens_per_word_before": self.tokens_per_word_before,
                "tokens_per_word_after": self.tokens_per_word_after,
                "reduction": 1 - self.tokens_per_word_after / self.tokens_per_word_before
                if self.tokens_per_word_before else 0.0}


def tokenizer_kind(tokenizer) -> str:
    """wordpiece, bpe or unigram for a fast tokenizer that can be extended; one-line error otherwise."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    kind = EXTENDABLE_KINDS.get(model["type"])
    if kind is None:
        raise VocabularyError(f"tokenizer.extend_vocabulary: a {model['type']} tokenizer cannot be extended (its "
                              f"model has no pieces to add to); extend a WordPiece, BPE or Unigram tokenizer, or leave "
                              "tokenizer.extend_vocabulary unset")
    if kind == "bpe" and (model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")):
        raise VocabularyError("tokenizer.extend_vocabulary: BPE with a continuing-subword prefix or end-of-word "
                              "suffix cannot be extended (its merged pieces are not the words' text); leave "
                              "tokenizer.extend_vocabulary unset")
    return kind


def pre_tokens(tokenizer, text: str) -> list[str]:
    """The words of ``text`` as the tokenizer's model sees them: normalised, then pre-tokenized."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return text.split()
    return [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def tokens_per_word(tokenizer, documents: Iterable[str]) -> float:
    """Tokens per whitespace-separated word (the denominator is the same for every tokenizer)."""
    words = tokens = 0
    for text in documents:
        words += len(text.split())
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return tokens / max(words, 1)


def extend_tokenizer(tokenizer, documents: Iterable[str], new_tokens: int, *, min_frequency: int = 2,
                     max_documents: int | None = None) -> Extension:
    """Learn up to ``new_tokens`` whole-word tokens from ``documents`` and add them to ``tokenizer``'s vocabulary.

    Args:
        tokenizer: a fast tokenizer (WordPiece, BPE or Unigram model); not modified.
        documents: domain text (read once, up to ``max_documents``).
        new_tokens: how many entries to add to the vocabulary: one per word for WordPiece and Unigram; a BPE word
            of k pieces takes k - 1 (itself and the intermediate pieces its merges create).
        min_frequency: a word seen fewer times is never added.
        max_documents: read at most this many documents.
    """
    import itertools

    kind = tokenizer_kind(tokenizer)
    old_size = len(tokenizer)
    if new_tokens < 1:
        raise VocabularyError(f"tokenizer.extend_vocabulary={new_tokens}: give a number of new tokens >= 1 (unset: no "
                              "extension)")
    if new_tokens > old_size:
        raise VocabularyError(f"tokenizer.extend_vocabulary={new_tokens} exceeds the allowed maximum, the tokenizer's "
                              f"own {old_size} entries (an extension may at most double the vocabulary); ask for fewer")
    texts = list(itertools.islice(documents, max_documents)) if max_documents else list(documents)
    counts = Counter(word for text in texts for word in pre_tokens(tokenizer, text))
    if not counts:
        raise VocabularyError("tokenizer.extend_vocabulary: the training text yields no words to learn from; check "
                              "data.train_files")
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    tokens = {word: tokenizer.backend_tokenizer.model.tokenize(word) for word, count in counts.items()
              if count >= min_frequency}
    split = {word: [token.value for token in found] for word, found in tokens.items()}
    # Tokens saved per vocabulary entry spent: a BPE word of k pieces costs k - 1 entries (itself and the
    # intermediate pieces of its merges), a WordPiece or Unigram word one.
    def cost(word: str) -> int:
        return len(split[word]) - 1 if kind == "bpe" else 1

    ranked = sorted((word for word, pieces in split.items() if len(pieces) > 1),
                    key=lambda word: (-counts[word] * (len(split[word]) - 1) / cost(word), word))
    chosen, entries = [], 0
    for word in ranked:
        if entries + cost(word) <= new_tokens:
            chosen.append(word)
            entries += cost(word)
        if entries >= new_tokens:
            break
    ids_taken = set(tokenizer.get_vocab().values()) | {token["id"] for token in state.get("added_tokens", [])}
    next_id = max(ids_taken) + 1
    pieces: dict[int, list[int]] = {}
    if kind == "unigram":
        if next_id != len(model["vocab"]):
            raise VocabularyError("tokenizer.extend_vocabulary: this Unigram tokenizer has added tokens beyond its "
                                  "pieces, so new pieces cannot take the next ids; leave tokenizer.extend_vocabulary unset")
        for word in chosen:
            current = [token.id for token in tokens[word]]  # an unknown character: the unk piece (and its score)
            total = sum(model["vocab"][i][1] for i in current)
            model["vocab"].append([word, total / 2])  # above the best segmentation's (negative) sum: Viterbi takes it
            pieces[len(model["vocab"]) - 1] = current
    elif kind == "wordpiece":
        for word in chosen:
            model["vocab"][word] = next_id
            pieces[next_id] = [token.id for token in tokens[word]]
            next_id += 1
    if kind == "bpe":
        extended = add_merges(tokenizer, state, chosen, pieces, next_id)
    else:
        extended = rebuild(tokenizer, state)
    final_vocab = extended.get_vocab()
    kept = [word for word in chosen if word in final_vocab and model_pieces(extended, word) == [word]]
    report_words = [{"token": word, "id": final_vocab[word], "frequency": counts[word], "pieces": split[word]}
                    for word in kept]
    return Extension(tokenizer=extended, kind=kind, pieces=pieces, words=report_words,
                     tokens_per_word_before=tokens_per_word(tokenizer, texts),
                     tokens_per_word_after=tokens_per_word(extended, texts), documents=len(texts),
                     words_seen=sum(len(text.split()) for text in texts))


def model_pieces(tokenizer, word: str) -> list[str]:
    """The pieces the tokenizer's model splits one pre-token into (no normalisation, no special tokens)."""
    return [token.value for token in tokenizer.backend_tokenizer.model.tokenize(word)]


def piece_ids(tokenizer, word: str) -> list[int]:
    """The ids of the pieces the tokenizer's model splits one pre-token into (unknown characters: the unk id)."""
    return [token.id for token in tokenizer.backend_tokenizer.model.tokenize(word)]


def add_merges(original, state: dict, chosen: list[str], pieces: dict, next_id: int):
    """BPE: merges that join each chosen word's pieces, left to right, after every existing merge; words that a
    competing new merge still splits get merges over their new pieces, up to BPE_MERGE_ROUNDS passes."""
    model = state["model"]
    pending, extended = list(chosen), original
    for _ in range(BPE_MERGE_ROUNDS):
        for word in pending:
            current = model_pieces(extended, word)  # the first round: the old split
            joined = current[0]
            for piece in current[1:]:
                merged = joined + piece
                model["merges"].append([joined, piece])
                if merged not in model["vocab"]:
                    model["vocab"][merged] = next_id
                    pieces[next_id] = piece_ids(original, merged)
                    next_id += 1
                joined = merged
        extended = rebuild(original, state)
        pending = [word for word in pending if model_pieces(extended, word) != [word]]
        if not pending:
            break
    return extended


def rebuild(tokenizer, state: dict):
    """A tokenizer like ``tokenizer`` (same class, special tokens, settings) whose tokenizer.json is ``state``."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for legacy in ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model"):
            if os.path.exists(os.path.join(folder, legacy)):  # the slow formats would describe the old vocabulary
                os.remove(os.path.join(folder, legacy))
        Path(folder, "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
        return AutoTokenizer.from_pretrained(folder)


def save_extension(extension: Extension, folder: str | os.PathLike) -> None:
    """The extended tokenizer and ``vocabulary_extension.json`` (report, words, pieces) in ``folder``."""
    extension.tokenizer.save_pretrained(os.fspath(folder))
    record = {**extension.report(), "pieces": {str(k): v for k, v in extension.pieces.items()},
              "words": extension.words}
    Path(folder, EXTENSION_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False))


def read_extension(folder: str | os.PathLike) -> dict | None:
    """The extension record saved in ``folder`` (pieces keyed by int), or None when there is none."""
    path = Path(folder, EXTENSION_FILE)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    record["pieces"] = {int(k): v for k, v in record["pieces"].items()}
    return record
