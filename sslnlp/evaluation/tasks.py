"""Labelled tasks for evaluation: local files (JSONL, CSV/TSV, Parquet) or Hub datasets, with GLUE built in.

    from sslnlp.config import TaskConfig
    task = load_task(TaskConfig(name="supersense", train_file="train.jsonl", validation_file="validation.jsonl",
                                test_file="test.jsonl", label_names="labels.json"))
    task = load_task(TaskConfig(name="rte"))          # GLUE: nyu-mll/glue, its columns, labels and metrics
    text, text_pair, label = task.train[0]            # label: a class id (int) or a number (regression)

Every example becomes ``Example(text, text_pair or None, label)``; in a token task (``kind: token``) ``text`` is the
tuple of words and ``label`` the tuple of their tag ids. Labels are mapped to ids here, once: class names through
``label_names`` (given, or the sorted names seen in training), integers as they are. A bad record stops the
load with one line naming the file, the line (or row) and what to change.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sslnlp.config import TaskConfig

PROBLEM_TYPES = ("classification", "regression")
KINDS = ("sequence", "token")
METRICS = ("accuracy", "f1", "macro_f1", "matthews_correlation", "pearson", "spearman", "entity_f1")


class TaskError(ValueError):
    """A user mistake in a labelled task: one line naming the file / row / setting and what to do."""


class Example(NamedTuple):
    text: str | tuple[str, ...]  # a token task: the words
    text_pair: str | None
    label: int | float | tuple[int, ...]  # a token task: a tag id per word


@dataclass(frozen=True)
class GlueTask:
    text_field: str
    text_pair_field: str | None
    label_names: tuple[str, ...] | None  # None: regression
    metrics: tuple[str, ...]  # the first is the official headline metric
    validation_split: str = "validation"


# GLUE's test labels are hidden, so the official validation split is the reported one; the probe's regularisation
# and the fine-tuning epochs are chosen on a held-out share of train (split_ratio), never on the reported split.
GLUE_DATASET = "nyu-mll/glue"
GLUE_TASKS = {
    "cola": GlueTask("sentence", None, ("unacceptable", "acceptable"), ("matthews_correlation", "accuracy")),
    "sst2": GlueTask("sentence", None, ("negative", "positive"), ("accuracy",)),
    "mrpc": GlueTask("sentence1", "sentence2", ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    "qqp": GlueTask("question1", "question2", ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "stsb": GlueTask("sentence1", "sentence2", None, ("pearson", "spearman")),
    "mnli": GlueTask("premise", "hypothesis", ("entailment", "neutral", "contradiction"), ("accuracy",),
                     validation_split="validation_matched"),
    "qnli": GlueTask("question", "sentence", ("entailment", "not_entailment"), ("accuracy",)),
    "rte": GlueTask("sentence1", "sentence2", ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": GlueTask("sentence1", "sentence2", ("not_entailment", "entailment"), ("accuracy",)),
}
GLUE_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}


@dataclass
class LabelledTask:
    """A loaded task: three lists of examples plus what the metrics need to know."""

    name: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    problem_type: str
    label_names: list[str] | None  # classification: names in id order
    metrics: list[str]  # the first selects (probe regularisation) and heads the table
    report_split: str  # which split ``test`` is, in words, for the results table
    max_seq_length: int | None = None
    kind: str = "sequence"  # or "token": a label per word
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # tokenized splits, by tokenizer
    # a token task's kept words, per split: {"labels": [W], "lengths": [N]} (aligned with its word features)
    targets: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == "regression" else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return any(example.text_pair is not None for example in self.train[:100])

    @property
    def is_token_level(self) -> bool:
        return self.kind == "token"

    @property
    def stratified(self) -> bool:
        """Subsets keep the class shares (sequence classification); others are seeded samples."""
        return self.kind == "sequence" and self.problem_type == "classification"

    def fingerprint(self) -> str:
        """A short hash of the examples and labels: cache keys change when the data does."""
        digest = hashlib.sha256()
        for split in (self.train, self.validation, self.test):
            digest.update(json.dumps(split, ensure_ascii=False).encode())
        digest.update(json.dumps([self.problem_type, self.label_names]).encode())
        return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------ reading


def _open_text(path: Path):
    from sslnlp.data.corpus import open_binary  # the corpus readers' codec choice (.gz .bz2 .xz .zst by suffix)

    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="")


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        name = name.removesuffix(suffix)
    for fmt, suffixes in (("jsonl", (".jsonl", ".json", ".ndjson")), ("csv", (".csv",)), ("tsv", (".tsv",)),
                          ("parquet", (".parquet",))):
        if name.endswith(suffixes):
            return fmt
    raise TaskError(f"{path}: unknown task file format; use .jsonl, .csv, .tsv or .parquet (optionally compressed)")


def read_records(path: str | Path, columns: dict[str, str]) -> list[tuple[str, dict]]:
    """``(where, record)`` for every record of a task file; ``where`` is 'file:line' (or 'file: row N') for errors.

    Args:
        path: a .jsonl / .csv / .tsv / .parquet file, optionally compressed.
        columns: the columns the task reads, each mapped to the setting that names it ('text_field', ...); a
            missing column is an error naming the file, the columns found and that setting.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} does not exist; check the path (relative paths start in the "
                        "working directory)")
    fmt = _format_of(path)
    records: list[tuple[str, dict]] = []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:
            raise TaskError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
        _check_columns(str(path), columns, table.column_names)
        rows = table.select(list(columns)).to_pylist()
        return [(f"{path}: row {index + 1}", row) for index, row in enumerate(rows)]
    try:
        with _open_text(path) as handle:
            if fmt == "jsonl":
                for line_number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise TaskError(f"{path}:{line_number}: malformed JSON ({error.msg}); one JSON object per "
                                        "line") from None
                    if not isinstance(record, dict):
                        raise TaskError(f"{path}:{line_number}: a record must be a JSON object, got "
                                        f"{type(record).__name__}")
                    _check_columns(f"{path}:{line_number}", columns, list(record))
                    records.append((f"{path}:{line_number}", record))
            else:
                reader = csv.DictReader(handle, delimiter="," if fmt == "csv" else "\t")
                _check_columns(str(path), columns, reader.fieldnames or [])
                for row in reader:
                    records.append((f"{path}:{reader.line_num}", row))
    except UnicodeDecodeError:
        raise TaskError(f"{path}: invalid UTF-8; re-encode the file as UTF-8") from None
    except csv.Error as error:
        raise TaskError(f"{path}: malformed CSV ({error})") from None
    except (EOFError, OSError) as error:
        raise TaskError(f"{path}: cannot read the file: truncated or corrupt ({error})") from None
    return records


def _check_columns(where: str, columns: dict[str, str], found: list[str]) -> None:
    for column, setting in columns.items():
        if column not in found:
            raise TaskError(f"{where}: no column {column!r} (found {found}); set the task's {setting} to one of "
                            "those")


def _hub_records(task: TaskConfig, split: str, columns: dict[str, str]) -> tuple[list[tuple[str, dict]], list[str] | None]:
    """Records of a Hub dataset split and, when the label column is a ClassLabel, its names."""
    import datasets

    try:
        dataset = datasets.load_dataset(task.dataset_name, task.dataset_config_name, split=split)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise TaskError(f"cannot load dataset {task.dataset_name!r} (config {task.dataset_config_name!r}, split "
                        f"{split!r}): {reason}; check the name, or the network (HF_HUB_OFFLINE) and the datasets "
                        "cache") from None
    _check_columns(f"dataset {task.dataset_name} ({split})", columns, list(dataset.column_names))
    feature = dataset.features.get(task.label_field)
    feature = getattr(feature, "feature", feature)  # a sequence of tags: its items' ClassLabel
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    rows = dataset.select_columns(list(columns)).to_list()
    return [(f"dataset {task.dataset_name} ({split}): row {index + 1}", row) for index, row in enumerate(rows)], names


# ------------------------------------------------------------------------------------------------------- labels


_INTEGER = re.compile(r"^[+-]?\d+$")


def _as_integer(value: Any) -> int | None:
    """An integer label (int, integral float, bool, or a string of digits as CSV gives them), else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        return int(value.strip())
    return None


def _label_names_from(setting: Any) -> list[str] | None:
    if setting is None:
        return None
    if isinstance(setting, str):
        path = Path(setting).expanduser()
        if not path.is_file():
            raise TaskError(f"label_names={setting!r}: no such file; give a list of class names or a JSON file "
                            "holding one")
        try:
            setting = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise TaskError(f"{path}: not valid JSON ({error.msg}); label_names needs a JSON list of class "
                            "names") from None
    if not isinstance(setting, list) or not setting:
        raise TaskError(f"label_names must be a non-empty list of class names, got {setting!r}")
    names = [str(name) for name in setting]
    if len(set(names)) != len(names):
        raise TaskError(f"label_names has duplicates: {names}")
    return names


class LabelMapper:
    """Turns raw label values into ids (classification) or floats (regression), with one-line errors."""

    def __init__(self, problem_type: str, label_field: str, label_names: list[str] | None):
        self.problem_type, self.label_field = problem_type, label_field
        self.label_names = label_names
        self.index = {name: i for i, name in enumerate(label_names)} if label_names else None
        self.integer_ids = False  # True: labels are class ids given as integers, names are '0', '1', ...

    @classmethod
    def fit(cls, problem_type: str, label_field: str, label_names: list[str] | None,
            train_records: list[tuple[str, dict]]) -> "LabelMapper":
        """Without given names: integer labels keep their ids (names '0'..'max'), others become sorted names."""
        if problem_type == "regression" or label_names is not None:
            return cls(problem_type, label_field, label_names)
        values = [record.get(label_field) for _, record in train_records]
        integers = [_as_integer(v) for v in values]
        if values and all(i is not None for i in integers):
            if min(integers) < 0:
                where = train_records[integers.index(min(integers))][0]
                raise TaskError(f"{where}: label {min(integers)} is negative; class ids start at 0 (unlabelled "
                                "rows, like GLUE's test split's -1, cannot be used for training)")
            mapper = cls(problem_type, label_field, [str(i) for i in range(max(integers) + 1)])
            mapper.integer_ids = True
            return mapper
        names = sorted({str(v) for v in values if isinstance(v, (str, int, float)) and not isinstance(v, bool)})
        return cls(problem_type, label_field, names)

    def __call__(self, value: Any, where: str) -> int | float:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise TaskError(f"{where}: no label in column {self.label_field!r}; every example needs one (remove "
                            "unlabelled rows)")
        if self.problem_type == "regression":
            try:
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            except (TypeError, ValueError):
                raise TaskError(f"{where}: label {value!r} is not a number; problem_type=regression needs numeric "
                                "labels (or set problem_type=classification)") from None
        if isinstance(value, (list, dict)):
            raise TaskError(f"{where}: label {value!r} is a {type(value).__name__}; give one class name or id per "
                            "example")
        names = self.label_names
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        integer = _as_integer(value)
        if self.integer_ids:  # ids as the training split gave them
            if integer is None:
                raise TaskError(f"{where}: label {value!r} is not a class id; the training labels are integers "
                                f"0-{len(names) - 1} (or set label_names to map names)")
        elif str(value) in self.index:
            return self.index[str(value)]
        elif integer is None or any(_as_integer(name) is not None for name in names):
            raise TaskError(f"{where}: unknown label {value!r}; known labels: {shown} (set label_names to list "
                            "every class, or fix the value)")
        if integer < 0:
            raise TaskError(f"{where}: label {value!r} means unlabelled (hidden test labels are -1); remove the row or "
                            "report another split (GLUE: validation)")
        if not 0 <= integer < len(names):  # an id into label_names
            raise TaskError(f"{where}: label {value!r} is out of range: there are {len(names)} classes (ids "
                            f"0-{len(names) - 1}); set label_names to list every class, or fix the value")
        return integer


# -------------------------------------------------------------------------------------------------------- loading


def resolve_task_config(task: TaskConfig) -> TaskConfig:
    """A GLUE name without files or dataset expands to nyu-mll/glue with the task's columns; else unchanged."""
    import dataclasses

    key = GLUE_ALIASES.get((task.name or "").lower(), (task.name or "").lower())
    if key not in GLUE_TASKS or task.train_file or task.dataset_name:
        if not task.train_file and not task.dataset_name:
            known = ", ".join(GLUE_TASKS)
            raise TaskError(f"task {task.name!r} has no train_file and no dataset_name, and is not a GLUE task "
                            f"({known}); give train_file (JSONL/CSV/Parquet) or dataset_name")
        return task
    glue = GLUE_TASKS[key]
    return dataclasses.replace(
        task, name=key, dataset_name=GLUE_DATASET, dataset_config_name=key, text_field=glue.text_field,
        text_pair_field=glue.text_pair_field, label_field="label",
        label_names=list(glue.label_names) if glue.label_names else None,
        problem_type="regression" if glue.label_names is None else "classification",
        validation_split=task.validation_split, test_split=task.test_split or glue.validation_split,
        metric=task.metric or glue.metrics[0])


def default_metrics(problem_type: str, num_labels: int, name: str | None = None) -> list[str]:
    key = GLUE_ALIASES.get((name or "").lower(), (name or "").lower())
    if key in GLUE_TASKS:
        return list(GLUE_TASKS[key].metrics)
    if problem_type == "regression":
        return ["pearson", "spearman"]
    return ["accuracy", "f1", "matthews_correlation"] if num_labels == 2 else ["accuracy", "macro_f1"]


def task_name(task: TaskConfig) -> str:
    """A task's name: its own, or its train file's (or Hub dataset's) name without suffixes."""
    return task.name or Path(task.train_file or task.dataset_name or "").name.split(".")[0]


def load_task(task: TaskConfig) -> LabelledTask:
    """Load a labelled task's train / validation / test examples.

    Args:
        task: a TaskConfig: files (train_file, optional validation_file / test_file) or a Hub dataset
            (dataset_name, splits), or just the name of a GLUE task. A missing validation or test split is a
            seeded ``split_ratio`` share of the training examples (disjoint from each other and from train).

    Returns:
        a LabelledTask whose splits are lists of ``Example(text, text_pair, label)``.
    """
    task = resolve_task_config(task)
    name = task_name(task)
    # The name becomes a directory and file name under output_dir: it must not be able to point elsewhere.
    if not re.fullmatch(r"[\w][\w.+-]{0,99}", name) or ".." in name:
        raise TaskError(f"task name {name!r} must be a plain name (letters, digits, '_', '-', '.', '+'; no '/' or '..'): "
                        "it names the task's folder under output_dir")
    if task.problem_type not in PROBLEM_TYPES:
        raise TaskError(f"task {name!r}: problem_type={task.problem_type!r} is not valid; choose one of "
                        f"{', '.join(PROBLEM_TYPES)}")
    if task.kind not in KINDS:
        raise TaskError(f"task {name!r}: kind={task.kind!r} is not valid; choose one of {', '.join(KINDS)}")
    if task.kind == "token" and (task.problem_type != "classification" or task.text_pair_field):
        raise TaskError(f"task {name!r}: kind=token tags words with classes: set problem_type=classification and no "
                        "text_pair_field")
    if task.metric is not None and task.metric not in METRICS:
        raise TaskError(f"task {name!r}: metric={task.metric!r} is not valid; choose one of {', '.join(METRICS)}")
    if not 0 < task.split_ratio < 0.5:
        raise TaskError(f"task {name!r}: split_ratio={task.split_ratio} must be in (0, 0.5)")
    columns = {task.text_field: "text_field", **({task.text_pair_field: "text_pair_field"} if task.text_pair_field
                                                 else {}), task.label_field: "label_field"}

    hub_names = None
    if task.dataset_name:
        raw_train, hub_names = _hub_records(task, task.train_split, columns)
        raw_validation = _hub_records(task, task.validation_split, columns)[0] if task.validation_split else None
        raw_test = _hub_records(task, task.test_split, columns)[0] if task.test_split else None
        where = {"train": task.train_split, "validation": task.validation_split, "test": task.test_split}
    else:
        raw_train = read_records(task.train_file, columns)
        raw_validation = read_records(task.validation_file, columns) if task.validation_file else None
        raw_test = read_records(task.test_file, columns) if task.test_file else None
        where = {"train": task.train_file, "validation": task.validation_file, "test": task.test_file}
    for split, records in (("train", raw_train), ("validation", raw_validation), ("test", raw_test)):
        if records is not None and not records:
            raise TaskError(f"task {name!r}: the {split} split ({where[split]}) has no examples; give a file with "
                            "labelled rows")

    label_names = _label_names_from(task.label_names)
    if label_names is None and hub_names and task.problem_type == "classification":
        label_names = hub_names
    mapper = LabelMapper.fit(task.problem_type, task.label_field, label_names,
                             _tag_records(raw_train, task.label_field) if task.kind == "token" else raw_train)
    if hub_names and task.problem_type == "classification":
        mapper.integer_ids = True  # a ClassLabel column holds ids, even when its names look like numbers ('1'..'5')

    def examples(records: list[tuple[str, dict]]) -> list[Example]:
        if task.kind == "token":
            return [_token_example(record, where_, task, mapper) for where_, record in records]
        converted = []
        for where_, record in records:
            text = _text(record.get(task.text_field), where_, task.text_field, "text_field")
            pair = (_text(record.get(task.text_pair_field), where_, task.text_pair_field, "text_pair_field")
                    if task.text_pair_field else None)
            converted.append(Example(text, pair, mapper(record.get(task.label_field), where_)))
        return converted

    train, validation, test = held_out_splits(
        task, name, examples(raw_train), examples(raw_validation) if raw_validation is not None else None,
        examples(raw_test) if raw_test is not None else None)

    if task.dataset_name:
        report_split = task.test_split if raw_test is not None else f"{task.split_ratio:.0%} of {task.train_split}"
    else:
        report_split = "test" if raw_test is not None else f"test ({task.split_ratio:.0%} of train)"
    num_labels = 1 if task.problem_type == "regression" else len(mapper.label_names)
    if task.problem_type == "classification" and num_labels < 2:
        raise TaskError(f"task {name!r}: the training split has a single class ({mapper.label_names}); "
                        "classification needs at least two")
    metrics = default_metrics(task.problem_type, num_labels, task.name)
    if task.kind == "token":  # BIO tags: entities, scored whole (seqeval); other tags: per word
        metrics = ["entity_f1", "accuracy"] if is_bio(mapper.label_names) else ["accuracy", "macro_f1"]
    if task.metric:
        metrics = [task.metric] + [m for m in metrics if m != task.metric]
    return LabelledTask(name=name, train=train, validation=validation, test=test, problem_type=task.problem_type,
                        label_names=mapper.label_names if task.problem_type == "classification" else None,
                        metrics=metrics, report_split=report_split, max_seq_length=task.max_seq_length, kind=task.kind)


def train_texts(task: TaskConfig) -> list[str]:
    """The texts of a task's train split, labels ignored (task-adaptive pretraining): the examples fine-tuning
    trains on, never a validation or test text. Its validation and test files (or Hub splits) are not opened; when a
    split is carved from the train file (``split_ratio``), its share is left out exactly as ``load_task`` leaves it
    out. A pair task gives both texts; a token task its words joined by spaces."""
    task = resolve_task_config(task)
    name = task_name(task)
    columns = {task.text_field: "text_field", **({task.text_pair_field: "text_pair_field"} if task.text_pair_field
                                                 else {})}
    if task.dataset_name:
        records = _hub_records(task, task.train_split, columns)[0]
        has_validation, has_test = task.validation_split is not None, task.test_split is not None
    else:
        if not task.train_file:
            raise TaskError(f"task {name!r} has no train_file or dataset_name; task texts come from its train split")
        records = read_records(task.train_file, columns)
        has_validation, has_test = task.validation_file is not None, task.test_file is not None

    def texts(where: str, record: dict) -> list[str]:
        if task.kind == "token":
            words = record.get(task.text_field)
            if not isinstance(words, list):
                raise TaskError(f"{where}: {task.text_field!r} must be a list of words in a token task")
            return [" ".join(str(word) for word in words)]
        found = [_text(record.get(task.text_field), where, task.text_field, "text_field")]
        if task.text_pair_field:
            found.append(_text(record.get(task.text_pair_field), where, task.text_pair_field, "text_pair_field"))
        return found

    per_example = [texts(where, record) for where, record in records]
    kept, _, _ = held_out_splits(task, name, per_example, [] if has_validation else None, [] if has_test else None)
    return [text for example in kept for text in example]


def task_texts(reference: str) -> list[str]:
    """``train_texts`` of a task of an evaluate recipe: ``RECIPE`` (its only task) or ``RECIPE#TASK`` (data.task_texts)."""
    from sslnlp.config import ConfigError, EvaluateConfig, load_config

    path, _, wanted = reference.partition("#")
    if not Path(path).is_file():
        raise ConfigError(f"data.task_texts={reference!r}: no recipe file {path!r}; give an evaluate recipe (e.g. "
                          "recipes/evaluate/sst2.yaml), optionally with #TASK")
    configs = load_config(EvaluateConfig, path, []).task_configs()
    names = [task_name(config) for config in configs]
    if wanted:
        if wanted not in names:
            raise ConfigError(f"data.task_texts={reference!r}: the recipe has no task {wanted!r} (it has "
                              f"{', '.join(names)})")
        return train_texts(configs[names.index(wanted)])
    if len(configs) > 1:
        raise ConfigError(f"data.task_texts={reference!r}: the recipe has {len(configs)} tasks ({', '.join(names)}); "
                          f"name one: {path}#{names[0]}")
    return train_texts(configs[0])


def held_out_splits(task: TaskConfig, name: str, train: list[Example], validation: list[Example] | None,
                    test: list[Example] | None) -> tuple[list[Example], list[Example], list[Example]]:
    """The three splits: a missing validation or test split is a seeded ``split_ratio`` share of train (disjoint
    from each other and from what train keeps); then train is cut to ``max_train_examples`` (a seeded sample)."""
    rng = random.Random(task.seed)
    held_out = max(1, round(task.split_ratio * len(train)))
    if validation is None or test is None:
        order = list(range(len(train)))
        rng.shuffle(order)
        needed = (validation is None) + (test is None)
        if len(train) - needed * held_out < 2:
            raise TaskError(f"task {name!r}: {len(train)} training examples are too few to hold out validation / test "
                            f"with split_ratio={task.split_ratio}; give validation_file and test_file")
        taken = iter(order[i * held_out:(i + 1) * held_out] for i in range(needed))
        if test is None:
            test = [train[i] for i in sorted(next(taken))]
        if validation is None:
            validation = [train[i] for i in sorted(next(taken))]
        kept = set(order[needed * held_out:])
        train = [example for i, example in enumerate(train) if i in kept]
    if task.max_train_examples and len(train) > task.max_train_examples:
        train = [train[i] for i in sorted(rng.sample(range(len(train)), task.max_train_examples))]
    return train, validation, test


def is_bio(label_names: list[str]) -> bool:
    """Tags in the BIO scheme (O, B-X, I-X; IOB2 as CoNLL-2003 and WNUT-17 give them), with at least one entity."""
    return any(n.startswith("B-") for n in label_names) and all(n == "O" or n[:2] in ("B-", "I-") for n in label_names)


def _tag_records(records: list[tuple[str, dict]], label_field: str) -> list[tuple[str, dict]]:
    """Every tag of a token task's records as a record of its own (what LabelMapper.fit reads)."""
    return [(where, {label_field: tag}) for where, record in records
            for tag in (record.get(label_field) if isinstance(record.get(label_field), (list, tuple)) else [])]


def _token_example(record: dict, where: str, task: TaskConfig, mapper: LabelMapper) -> Example:
    """(words, None, tag ids) of one record of a token task; lists of different lengths are a one-line error."""
    words, tags = record.get(task.text_field), record.get(task.label_field)
    if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) and w for w in words):
        raise TaskError(f"{where}: column {task.text_field!r} must hold a non-empty list of words (kind=token), got "
                        f"{str(words)[:60]}")
    if not isinstance(tags, (list, tuple)):
        raise TaskError(f"{where}: column {task.label_field!r} must hold a list of tags, one per word (kind=token)")
    if len(tags) != len(words):
        raise TaskError(f"{where}: {len(words)} words but {len(tags)} tags; a token task needs one tag per word")
    return Example(tuple(words), None, tuple(mapper(tag, where) for tag in tags))


def _text(value: Any, where: str, column: str, setting: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise TaskError(f"{where}: column {column!r} is empty; every example needs a text (remove the row, or set "
                        f"the task's {setting})")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TaskError(f"{where}: column {column!r} holds a {type(value).__name__}, not text; set the task's {setting} "
                    "to a text column")
