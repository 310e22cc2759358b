"""Train or load tokenizers: WordPiece (BERT), byte-level BPE (RoBERTa / GPT-2) and Unigram (SentencePiece).

Train one from the command line (reads the files as a stream, never the whole corpus at once):

    sslnlp tokenizer data/*.txt --output-dir runs/tokenizer-wordpiece --kind wordpiece --vocab-size 8192
    python -m sslnlp tokenizer corpus.jsonl.zst --output-dir runs/tokenizer-bpe --kind bpe --decoder

or from Python: `train_tokenizer(list_of_strings, "runs/tokenizer", kind="bpe")`. The output directory loads back with
`transformers.AutoTokenizer.from_pretrained(directory)` or `load_tokenizer(directory)`.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from sslnlp.files import atomic_path

if TYPE_CHECKING:  # transformers is imported lazily: it is slow to import and not needed for --help
    import transformers

TOKENIZER_KINDS = ("wordpiece", "bpe", "unigram")
BYTE_LEVEL_ALPHABET_SIZE = 256
# Documents handed to the Rust trainer per Python call: large enough to amortise the call, small enough that a
# generator is never pulled far ahead of what the trainer has consumed.
DOCUMENTS_PER_TRAINING_BATCH = 256


def special_tokens_for(kind: str, encoder: bool) -> dict[str, str]:
    """Map each transformers special-token attribute (`pad_token`, ...) to its token string.

    The dict order is the id order: the first occurrence of each distinct token gets the next id, starting at 0.

    Args:
        kind: one of TOKENIZER_KINDS.
        encoder: True for encoder objectives (a mask token; sequences wrapped in cls/sep), False for decoders.
    """
    if kind == "wordpiece":
        # BERT has no bos/eos; [CLS]/[SEP] play those roles so packing code can ask every tokenizer for bos/eos.
        return {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]", "bos_token": "[CLS]", "eos_token": "[SEP]"}
    if kind in ("bpe", "unigram"):
        special_tokens = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                          "cls_token": "<s>", "sep_token": "</s>"}
        if encoder:
            special_tokens["mask_token"] = "<mask>"
        return special_tokens
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def round_up_vocab_size(vocab_size: int, round_vocab_to: int) -> int:
    """Round vocab_size up to a multiple of round_vocab_to (0 or 1: unchanged); embedding matrices whose rows are a
    multiple of 64 run faster on GPUs.

    Args:
        vocab_size: the requested vocabulary size.
        round_vocab_to: the multiple to round up to.
    """
    if round_vocab_to <= 1:
        return vocab_size
    return -(-vocab_size // round_vocab_to) * round_vocab_to


def _batches_of_documents(documents: Iterable[str], max_documents: int | None) -> Iterator[list[str]]:
    """Yield lists of non-empty documents; raise the 'corpus is empty' error before training starts, not inside it."""
    document_stream = iter(documents)
    if max_documents is not None:
        # islice stops pulling at the limit, so a stream is never read past max_documents.
        document_stream = itertools.islice(document_stream, max_documents)
    non_empty_documents = (document for document in document_stream if _is_non_empty_document(document))
    first_document = next(non_empty_documents, None)
    if first_document is None:
        limit_note = f" within the first {max_documents} documents" if max_documents is not None else ""
        raise ValueError(f"corpus is empty: the document stream yielded no non-empty text{limit_note}")
    remaining_documents = itertools.chain([first_document], non_empty_documents)
    while batch := list(itertools.islice(remaining_documents, DOCUMENTS_PER_TRAINING_BATCH)):
        yield batch


def _is_non_empty_document(document: object) -> bool:
    if not isinstance(document, str):
        raise TypeError(f"documents must be strings, got {type(document).__name__}; pick the text column first "
                        "(sslnlp.data.corpus.load_corpus(..., text_field=...))")
    return bool(document.strip())


# Unigram scores are rounded to this many decimals: the Rust trainer's EM sums come out in a different order in every
# process (its word counts live in a randomly seeded hash map), which moves the last ~12 significant digits.
UNIGRAM_SCORE_DECIMALS = 6
# Word-internal characters reach the BPE trainer as stand-ins from the Supplementary Private Use Areas (see
# _WordPieceStandIns).
_FIRST_STAND_IN, _LAST_STAND_IN = 0xF0000, 0x10FFFD


class _StandInTable(dict):
    """A str.translate table (code point -> stand-in character) that hands out the next stand-in on first use."""

    def __init__(self, stand_ins: _WordPieceStandIns, continuation: bool):
        super().__init__()
        self.stand_ins, self.continuation = stand_ins, continuation

    def __missing__(self, code_point: int) -> str:
        self[code_point] = stand_in = self.stand_ins.new_stand_in(chr(code_point), self.continuation)
        return stand_in


class _WordPieceStandIns:
    """Train a WordPiece vocabulary with tokenizers' (deterministic) BpeTrainer instead of its WordPieceTrainer.

    WordPieceTrainer is a BpeTrainer with continuing_subword_prefix="##" that numbers the "##x" tokens in the iteration
    order of a randomly seeded Rust hash map and breaks ties between equally frequent pairs by those numbers, so every
    process learns a different vocabulary (huggingface/tokenizers#1794). Here each word-internal character x is
    replaced by a private-use stand-in for "##x" before the words reach a BpeTrainer without prefix, whose alphabet is
    sorted, so its numbering and tie-breaking are the same in every process. Stand-ins are handed out in order of first
    appearance, so the same documents always give the same stand-ins; real characters that fall in the stand-in range
    are replaced too, so nothing collides.
    """

    def __init__(self):
        self.next_code_point = _FIRST_STAND_IN
        self.original: dict[str, tuple[str, bool]] = {}  # stand-in -> (character, is "##character")
        self.continuation_table = _StandInTable(self, continuation=True)
        self.initial_table = _StandInTable(self, continuation=False)
        self.new_alphabet_words: list[str] = []

    def new_stand_in(self, character: str, continuation: bool) -> str:
        if self.next_code_point > _LAST_STAND_IN:
            raise ValueError("too many distinct characters for the deterministic WordPiece training")
        stand_in = chr(self.next_code_point)
        self.next_code_point += 1
        self.original[stand_in] = (character, continuation)
        if continuation:
            # WordPieceTrainer also puts a word-internal character on its own into the alphabet: add it as a
            # one-character word, which has no pairs and so changes no merge.
            self.new_alphabet_words.append(self.initial(character))
        return stand_in

    def initial(self, character: str) -> str:
        return self.initial_table[ord(character)] if ord(character) >= _FIRST_STAND_IN else character

    def training_text(self, words: list[str]) -> str:
        """Join the pre-tokenized words of one document, word-internal characters replaced by their stand-ins."""
        mapped = [self.initial(word[0]) + word[1:].translate(self.continuation_table) for word in words]
        if self.new_alphabet_words:
            mapped += self.new_alphabet_words
            self.new_alphabet_words = []
        return " ".join(mapped)

    def original_token(self, token: str) -> str:
        """The WordPiece token ("ab", "##ab") that a token learned on stand-ins stands for."""
        characters = [self.original.get(stand_in, (stand_in, False)) for stand_in in token]
        return ("##" if characters[0][1] else "") + "".join(character for character, _ in characters)


def _train_wordpiece_vocabulary(tokenizer, batches: Iterator[list[str]], trainer) -> dict[str, int]:
    """Learn the WordPiece vocabulary for tokenizer's normalizer and pre-tokenizer, the same in every process.

    Args:
        tokenizer: the WordPiece tokenizer, normalizer and pre-tokenizer set.
        batches: lists of documents.
        trainer: a BpeTrainer without continuing_subword_prefix (the stand-ins play its part).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    stand_ins = _WordPieceStandIns()
    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer

    def training_texts():
        for batch in batches:
            yield [stand_ins.training_text([word for word, _ in pre_tokenizer.pre_tokenize_str(
                normalizer.normalize_str(document))]) for document in batch]

    training_tokenizer = Tokenizer(models.BPE())
    training_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    training_tokenizer.train_from_iterator(training_texts(), trainer=trainer)
    vocabulary = {stand_ins.original_token(token): token_id
                  for token, token_id in training_tokenizer.get_vocab(with_added_tokens=False).items()}
    if len(vocabulary) != training_tokenizer.get_vocab_size(with_added_tokens=False):
        raise AssertionError("two learned WordPiece tokens map to the same string")
    return vocabulary


def _canonical_unigram(tokenizer, num_special_tokens: int):
    """Make a trained Unigram model the same in every process (tokenizers' UnigramTrainer is not deterministic).

    The trainer (huggingface/tokenizers, tokenizers/src/models/unigram/trainer.rs) runs EM over its word counts in the
    iteration order of a randomly seeded hash map, so its float sums, and the scores, differ in the last digits; it
    gives the required characters that EM dropped the scores min_score, min_score + 1e-4, ... in hash-set order; and
    it orders equal scores by that order. Here every score is rounded to UNIGRAM_SCORE_DECIMALS decimals, the
    single characters on that score ladder get its scores in the order of the characters, and equal scores are
    ordered by piece.
    """
    import json
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.to_str())
    special_pieces = state["model"]["vocab"][:num_special_tokens]
    pieces = [(piece, round(score, UNIGRAM_SCORE_DECIMALS) + 0.0)  # + 0.0: no -0.0
              for piece, score in state["model"]["vocab"][num_special_tokens:]]
    if pieces:
        lowest = min(score for _, score in pieces)
        ladder = {round(lowest + step * 0.0001, UNIGRAM_SCORE_DECIMALS) for step in range(len(pieces))}
        on_ladder = sorted(index for index, (piece, score) in enumerate(pieces) if len(piece) == 1 and score in ladder)
        for index, score in zip(sorted(on_ladder, key=lambda index: pieces[index][0]),
                                sorted(pieces[index][1] for index in on_ladder)):
            pieces[index] = (pieces[index][0], score)
        pieces.sort(key=lambda piece_score: (-piece_score[1], piece_score[0]))
    state["model"]["vocab"] = special_pieces + [list(piece_score) for piece_score in pieces]
    return Tokenizer.from_str(json.dumps(state))


def _train(tokenizer, kind: str, trainer, special_tokens: list, batches: Iterator[list[str]]):
    """Train tokenizer's model; the result is the same in every process (tokenizers' WordPiece and Unigram trainers
    are not deterministic: see _WordPieceStandIns and _canonical_unigram).

    Args:
        tokenizer: the untrained tokenizer (model, normalizer and pre-tokenizer set).
        kind: one of TOKENIZER_KINDS.
        trainer: the trainer for kind (for wordpiece a BpeTrainer without continuing_subword_prefix).
        special_tokens: the trainer's special tokens.
        batches: lists of documents.
    """
    from tokenizers import models

    if kind == "wordpiece":
        tokenizer.model = models.WordPiece(_train_wordpiece_vocabulary(tokenizer, batches, trainer), unk_token="[UNK]",
                                           continuing_subword_prefix="##")
        tokenizer.add_special_tokens(special_tokens)  # as train_from_iterator does after training
        return tokenizer
    tokenizer.train_from_iterator(batches, trainer=trainer)
    return _canonical_unigram(tokenizer, len(special_tokens)) if kind == "unigram" else tokenizer


def train_tokenizer(documents: Iterable[str], output_dir: str | os.PathLike | None = None, *, kind: str = "wordpiece",
                    encoder: bool = True, vocab_size: int = 8192, round_vocab_to: int = 64, min_frequency: int = 2,
                    max_documents: int | None = None,
                    lowercase: bool | None = None) -> transformers.PreTrainedTokenizerFast:
    """Train a tokenizer on a stream of documents and return it as a transformers PreTrainedTokenizerFast.

    Special tokens get the lowest ids, in the order of `special_tokens_for(kind, encoder)`. On a small corpus the
    learned vocabulary can be smaller than the (rounded) target.

    Args:
        documents: any iterable of strings (list, generator, `load_corpus(...)`); read once, in batches.
        output_dir: when given, save there with `save_pretrained` (loads back with `AutoTokenizer.from_pretrained`).
        kind: "wordpiece" (BERT), "bpe" (byte-level, RoBERTa / GPT-2) or "unigram" (SentencePiece-style).
        encoder: True (encoder objectives: masked LM, ELECTRA, ...) adds a mask token and wraps sequences in cls/sep;
            False (decoders) adds nothing around a sequence for bpe/unigram (packing inserts EOS between documents).
            ``Objective.encoder`` says which an objective needs.
        vocab_size: target vocabulary size, special tokens included, before rounding.
        round_vocab_to: round vocab_size up to a multiple of this (0 or 1: no rounding).
        min_frequency: minimum pair/word count for a merge (ignored by unigram, whose trainer has no such knob).
        max_documents: read at most this many documents from the stream.
        lowercase: lowercase (and, for wordpiece, strip accents); default True for wordpiece, False otherwise.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = special_tokens_for(kind, encoder)
    if vocab_size < 1 or round_vocab_to < 0:
        raise ValueError(f"vocab_size must be >= 1 and round_vocab_to >= 0; got {vocab_size} and {round_vocab_to}")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be >= 1 or None; got {max_documents}")
    target_vocab_size = round_up_vocab_size(vocab_size, round_vocab_to)
    # <mask> absorbs the space before it (as RoBERTa's does) so "a <mask> b" encodes like "a b" with one piece masked.
    trainer_special_tokens = [AddedToken(token, special=True, lstrip=(token == "<mask>"))
                              for token in dict.fromkeys(special_tokens.values())]
    token_ids = {str(token): token_id for token_id, token in enumerate(trainer_special_tokens)}
    show_progress = sys.stderr.isatty()  # progress bars only garble log files and captured test output

    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True if lowercase is None else lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        # Not WordPieceTrainer, which learns a different vocabulary in every process: see _WordPieceStandIns.
        trainer = trainers.BpeTrainer(vocab_size=target_vocab_size, min_frequency=min_frequency,
                                      special_tokens=trainer_special_tokens, show_progress=show_progress)
        post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", token_ids["[CLS]"]), ("[SEP]", token_ids["[SEP]"])])
    elif kind == "bpe":
        minimum_vocab_size = BYTE_LEVEL_ALPHABET_SIZE + len(trainer_special_tokens)
        if target_vocab_size < minimum_vocab_size:
            raise ValueError(f"byte-level BPE needs vocab_size >= {minimum_vocab_size} (256 bytes + "
                             f"{len(trainer_special_tokens)} special tokens); got {target_vocab_size}")
        tokenizer = Tokenizer(models.BPE())  # no unk: every byte is in the alphabet
        if lowercase:
            tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=target_vocab_size, min_frequency=min_frequency,
                                      special_tokens=trainer_special_tokens, show_progress=show_progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        if encoder:
            post_processor = processors.RobertaProcessing(("</s>", token_ids["</s>"]), ("<s>", token_ids["<s>"]),
                                                          trim_offsets=True, add_prefix_space=False)
        else:
            # Adds no tokens; only trims the leading space out of each piece's character offsets.
            post_processor = processors.ByteLevel(trim_offsets=True, add_prefix_space=False)
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = (normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]) if lowercase
                                else normalizers.NFKC())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(vocab_size=target_vocab_size, special_tokens=trainer_special_tokens,
                                          unk_token="<unk>", show_progress=show_progress)
        if encoder:
            # RoBERTa layout, all token type ids 0: RoBERTa-style models have a single token type embedding.
            post_processor = processors.TemplateProcessing(
                single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                special_tokens=[("<s>", token_ids["<s>"]), ("</s>", token_ids["</s>"])])
        else:
            post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    else:  # special_tokens_for has already rejected unknown kinds
        raise AssertionError(kind)

    tokenizer = _train(tokenizer, kind, trainer, trainer_special_tokens,
                       _batches_of_documents(documents, max_documents))
    tokenizer.post_processor = post_processor
    wrapper_arguments = {name: trainer_special_tokens[token_ids[token]] for name, token in special_tokens.items()}
    if kind == "wordpiece":
        # transformers 5 no longer returns token_type_ids by default; BERT-style models need them for sentence pairs.
        wrapper_arguments["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    # Saved with tokenizer_class "TokenizersBackend" (transformers 5's name for PreTrainedTokenizerFast), which
    # AutoTokenizer loads as the generic fast tokenizer from tokenizer.json even next to a bert/roberta/gpt2 config.
    pretrained_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **wrapper_arguments)
    if output_dir is not None:
        pretrained_tokenizer.save_pretrained(os.fspath(output_dir))
    return pretrained_tokenizer


def train_tokenizer_into(documents, saved: str | os.PathLike, options, *, encoder: bool) -> None:
    """Train a tokenizer with a run's TokenizerConfig ``options`` into ``saved``, whole or not at all: it is written
    beside it and renamed into place (``sslnlp.files.atomic_path``), so a kill never leaves half a tokenizer there."""
    logging.getLogger(__name__).info("training a %s tokenizer (vocabulary %d) on up to %d documents", options.kind,
                                     options.vocab_size, options.training_documents)
    # replace_directory: a directory without tokenizer.json (an older, interrupted run's) is not a tokenizer
    with atomic_path(saved, replace_directory=True) as temporary:
        train_tokenizer(documents, temporary, kind=options.kind, encoder=encoder, vocab_size=options.vocab_size,
                        min_frequency=options.min_frequency, max_documents=options.training_documents,
                        lowercase=options.lowercase)


def load_tokenizer(name_or_path: str | os.PathLike | transformers.PreTrainedTokenizerBase, *,
                   trust_remote_code: bool = False) -> transformers.PreTrainedTokenizerBase:
    """Load a fast tokenizer (a directory written by `train_tokenizer` / `sslnlp tokenizer`, or a Hub name).

    Args:
        name_or_path: a local directory, a Hub name, or an already loaded tokenizer (checked and returned as is).
        trust_remote_code: allow tokenizers whose code lives in the Hub repository.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if isinstance(name_or_path, PreTrainedTokenizerBase):
        tokenizer = name_or_path
    else:
        name_or_path = os.fspath(name_or_path)
        hint = "pass a directory written by `sslnlp tokenizer` or a Hub name (needs network)"
        local_path = os.path.expanduser(name_or_path)
        # Caught here because transformers would report a missing path as a badly formatted Hub repo id, and an
        # empty directory as "couldn't instantiate the backend tokenizer".
        if (os.path.isabs(name_or_path) or name_or_path.startswith((".", "~"))) and not os.path.isdir(local_path):
            raise ValueError(f"cannot load tokenizer {name_or_path!r}: no such directory; {hint}")
        if os.path.isdir(local_path) and not any(os.path.isfile(os.path.join(local_path, file_name))
                                                 for file_name in ("tokenizer.json", "tokenizer_config.json")):
            raise ValueError(f"cannot load tokenizer {name_or_path!r}: no tokenizer.json in that directory; {hint}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(local_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(" .:")
            raise ValueError(f"cannot load tokenizer {name_or_path!r}: {reason}; {hint}") from error
    if not tokenizer.is_fast:
        # Whole-word masking and packing need word_ids(), which only the Rust-backed tokenizers provide.
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', name_or_path)!r} is not a fast tokenizer "
                         f"({type(tokenizer).__name__}); word ids need a tokenizer.json-backed (fast) tokenizer")
    return tokenizer
