"""Learning curves: stratified, nested, seeded subsets of the train split only; the TF-IDF baseline against a direct
scikit-learn computation; probe and fine-tune curves from the command line into one results file, its table and the
report's chart (one colour per series); the fine-tuning protocol's steps, evaluation points and early stopping."""

import collections
import json
import random

import pytest
from test_evaluate import _task_dict, one_thread, pretrained  # noqa: F401  (fixtures)

from sslnlp.cli import main
from sslnlp.config import FinetuneOptions, TaskConfig
from sslnlp.evaluation.curves import curve_sizes, stratified_order, subset_indices, task_subset, tfidf_score
from sslnlp.evaluation.finetuning import evaluation_steps, training_steps
from sslnlp.evaluation.tasks import TaskError, load_task


def three_class_task(tmp_path, count=300):
    """Classes a, b, c in shares 0.6 / 0.3 / 0.1, texts that say their class (with noise words)."""
    rng = random.Random(0)
    words = ["red", "blue", "green", "small", "large", "quiet", "loud", "old", "new"]
    rows = []
    for i in range(count):
        label = "a" if i % 10 < 6 else "b" if i % 10 < 9 else "c"
        rows.append({"text": f"{label}{label} {' '.join(rng.sample(words, 3))} item {i}", "label": label})
    path = tmp_path / "three.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_task(TaskConfig(name="three", train_file=str(path)))


def test_subsets_are_stratified_nested_seeded_and_from_train_only(tmp_path):
    task = three_class_task(tmp_path)
    labels = [e.label for e in task.train]
    share = {label: count / len(labels) for label, count in collections.Counter(labels).items()}
    held_out = {e.text for e in task.validation + task.test}
    for seed in (0, 1):
        previous = set()
        for size in (3, 10, 40, 100, len(task.train)):
            chosen = subset_indices(task, size, seed)
            assert len(chosen) == size and previous <= set(chosen)  # nested: the larger holds the smaller
            counts = collections.Counter(labels[i] for i in chosen)
            assert set(counts) == set(share)  # every class, even at 3 examples
            assert all(abs(counts[label] - share[label] * size) <= 1 for label in share), (size, counts)
            assert not {task.train[i].text for i in chosen} & held_out  # never validation or test text
            previous = set(chosen)
    assert subset_indices(task, 40, 0) == subset_indices(task, 40, 0)
    assert subset_indices(task, 40, 0) != subset_indices(task, 40, 1)
    assert sorted(stratified_order([0.5, 1.5, 2.5, 3.5], seed=3, classification=False)) == [0, 1, 2, 3]


def test_sizes_the_task_cannot_give_are_refused_in_one_line(tmp_path):
    task = three_class_task(tmp_path)
    assert curve_sizes([100, "all", 10], task) == [10, 100, len(task.train)]
    with pytest.raises(TaskError, match=r"train_sizes: 5000 is larger than task 'three'.s train split \(240 examples\)"):
        curve_sizes([5000], task)
    with pytest.raises(TaskError, match=r"train_sizes: 2 is smaller than task 'three'.s 3 classes"):
        curve_sizes([2, 10], task)


def test_tfidf_baseline_equals_scikit_learn_on_the_same_subset(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    task = three_class_task(tmp_path)
    subset = task_subset(task, subset_indices(task, 30, seed=2))
    ours = tfidf_score(subset)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([e.text for e in subset.train])
    train = vectorizer.transform([e.text for e in subset.train])
    best = None
    for c in (0.1, 1.0, 10.0, 100.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(train, [e.label for e in subset.train])
        accuracy = {split: (model.predict(vectorizer.transform([e.text for e in getattr(subset, split)]))
                            == [e.label for e in getattr(subset, split)]).mean() for split in ("validation", "test")}
        if best is None or accuracy["validation"] > best[1]["validation"]:
            best = (c, accuracy)
    assert ours["C"] == best[0]
    assert ours["test"]["accuracy"] == pytest.approx(best[1]["test"])
    assert ours["test"]["accuracy"] > 0.65  # the texts name their class; the majority class is 0.6


def test_steps_not_epochs_and_early_stopping_report_the_best_validation_point(pretrained):
    from sslnlp.config import EvaluateConfig, load_config
    from sslnlp.data.tokenizer import load_tokenizer
    from sslnlp.evaluation.finetuning import finetune_once
    from sslnlp.evaluation.loading import load_model_config
    from sslnlp.runtime import make_accelerator

    assert training_steps(FinetuneOptions(num_train_epochs=3, min_steps=50), batches_per_epoch=2) == 50
    assert training_steps(FinetuneOptions(num_train_epochs=3, max_steps=7), batches_per_epoch=2) == 7
    assert evaluation_steps(FinetuneOptions(evaluations=4), 50, 2) == {12, 25, 38, 50}
    assert evaluation_steps(FinetuneOptions(), 10, 4) == {4, 8, 10}  # each epoch's end and the last step

    model_dir, tasks = pretrained
    config = load_config(EvaluateConfig, None, [f"model_name_or_path={model_dir}", "finetune.max_steps=24",
                                                "finetune.evaluations=6", "finetune.early_stopping=true",
                                                "finetune.learning_rate=2e-3", "finetune.per_device_train_batch_size=8"])
    task = load_task(tasks["animacy"])
    result = finetune_once(task, load_tokenizer(str(model_dir)), config, load_model_config(config), 0,
                           make_accelerator())
    history = result["validation"]
    assert [point["step"] for point in history] == [4, 8, 12, 16, 20, 24] and result["steps"] == 24
    best = max(history, key=lambda point: point["accuracy"])  # the first of equal scores
    assert result["test_step"] == best["step"]


def test_probe_and_finetune_curves_from_the_command_line_into_one_table_and_chart(pretrained, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from sslnlp.publishing.report import _curve_figure, curve_series, read_run

    model_dir, tasks = pretrained
    output = tmp_path / "curve"
    common = [f"model_name_or_path={model_dir}", f"tasks={json.dumps([_task_dict(tasks['animacy'])])}",
              "train_sizes=[8, 32, all]", "curve_seeds=[0, 1]", "--output-dir", str(output)]
    main(["probe", *common])
    main(["finetune", *common, "finetune.seeds=[0]", "finetune.num_train_epochs=1", "finetune.min_steps=6",
          "finetune.learning_rate=2e-3", "finetune.per_device_train_batch_size=16", "finetune.save_model=false"])
    results = json.loads((output / "results.json").read_text())
    curves = results["tasks"]["animacy"]["curves"]
    assert set(curves) == {"probe", "random_probe", "tfidf", "finetune", "random_finetune"}  # both runs, merged
    train_size = len(load_task(tasks["animacy"]).train)
    for series in curves.values():
        assert [point["size"] for point in series] == [8, 32, train_size]
        assert all(point["seeds"] == [0, 1] and len(point["values"]) == 2 for point in series)
        for point in series:
            values = sorted(value["accuracy"] for value in point["values"])
            assert (point["min"]["accuracy"], point["max"]["accuracy"]) == (values[0], values[-1])
    # the whole split at seed 0 is the fine-tune run the table already has, not trained again
    assert curves["finetune"][-1]["values"][0] == results["tasks"]["animacy"]["finetune"]["runs"][0]
    whole = curves["probe"][-1]["median"]["accuracy"]
    assert whole == pytest.approx(results["tasks"]["animacy"]["probe"]["test"]["accuracy"])
    table = (output / "results.md").read_text()
    assert "Learning curve of animacy" in table and f"| {train_size:,} | " in table
    from sslnlp.publishing.card import evaluation_results

    assert "Learning curve of animacy" in evaluation_results(results)[1]  # the model card carries the curve

    main(["report", str(output), "--output-dir", str(tmp_path / "report")])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    drawn = report["curves"]["curve"]["animacy (accuracy, test (10% of train))"]
    assert drawn["TF-IDF + LR"] == [[p["size"], p["median"]["accuracy"], p["min"]["accuracy"], p["max"]["accuracy"]]
                                    for p in curves["tfidf"]]
    assert (tmp_path / "report" / "learning_curves.png").is_file()
    run = read_run(output)
    figure = _curve_figure([run], [curve_series(run)])
    lines = figure.axes[0].get_lines()
    assert len(lines) == 5 and len({to_hex(line.get_color()) for line in lines}) == 5  # a colour per series
    assert figure.axes[0].get_xscale() == "log"


def test_the_tfidf_baseline_can_be_left_out(pretrained, tmp_path):
    model_dir, tasks = pretrained
    output = tmp_path / "no-tfidf"
    main(["probe", f"model_name_or_path={model_dir}", f"tasks={json.dumps([_task_dict(tasks['same_subject'])])}",
          "train_sizes=[16]", "curve_seeds=[0]", "tfidf_baseline=false", "random_baseline=false",
          "--output-dir", str(output)])
    curves = json.loads((output / "results.json").read_text())["tasks"]["same_subject"]["curves"]
    assert set(curves) == {"probe"}
