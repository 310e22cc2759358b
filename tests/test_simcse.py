"""Unsupervised SimCSE (objective.name=simcse): segments as views, dropout as the only difference between the two
views, the loss falls, the global batch under the real 2-process launcher, exact resume, continuing from an MLM run,
the joint MLM + contrastive objective, and the sentence-transformers export."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ACCELERATE, tiny_overrides

from sslnlp.config import PretrainConfig, load_config
from sslnlp.training.loop import pretrain

REPO = Path(__file__).resolve().parents[1]
SIMCSE = {"objective.name": "simcse", "data.max_seq_length": 64, "training.learning_rate": "1e-3",
          "model.config_overrides": "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
                                    "intermediate_size: 64, max_position_embeddings: 64}"}


def run(output_dir, tokenizer_dir, corpus_file, steps, **extra):
    return pretrain(load_config(PretrainConfig, None, tiny_overrides(output_dir, tokenizer_dir, steps=steps, **{
        "data.train_files": corpus_file, **SIMCSE, **extra})))


def test_segments_are_pieces_of_one_document_and_batches_have_similar_lengths(wordpiece_tokenizer, documents):
    from sslnlp.data.corpus import load_corpus
    from sslnlp.objectives.simcse import SegmentCollator
    from sslnlp.data.blocks import BlockStream
    from sslnlp.data.segments import SegmentBlocks, SegmentLayout

    texts = documents[:40]
    layout = SegmentLayout.encoder(wordpiece_tokenizer, 12, 4)
    blocks = SegmentBlocks(load_corpus(texts), wordpiece_tokenizer, 64, layout=layout, repeat=False)
    rows = [row for chunk in blocks.iter_shard(0) for row in zip(chunk["input_ids"], chunk["attention_mask"])]
    whole = [wordpiece_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    expected = [ids[start: start + 12] for ids in whole for start in range(0, len(ids), 12) if len(ids[start: start + 12]) >= 4]
    cls, sep = wordpiece_tokenizer.cls_token_id, wordpiece_tokenizer.sep_token_id
    assert [list(ids[mask][1:-1]) for ids, mask in rows] == expected  # in order, none crossing a document
    assert all(ids[mask][0] == cls and ids[mask][-1] == sep and not mask[int(mask.sum()):].any() for ids, mask in rows)
    stream = BlockStream(SegmentBlocks(load_corpus(texts), wordpiece_tokenizer, 64, layout=layout), 8, SegmentCollator(),
                         shuffle_buffer_size=256, seed=0)
    batches = [batch for batch, _ in zip(stream, range(20))]
    assert all(b["input_ids"].shape[1] <= 16 for b in batches)  # trimmed to the longest (12 + 2, rounded to 8)
    spreads = [int(b["attention_mask"].sum(1).max() - b["attention_mask"].sum(1).min()) for b in batches]
    assert sorted(spreads)[len(spreads) // 2] <= 2  # bucketed: most batches hold segments of about one length


def test_adjacent_positives_pair_consecutive_segments_of_one_document(wordpiece_tokenizer, documents):
    from sslnlp.data.corpus import load_corpus
    from sslnlp.objectives.simcse import SegmentCollator
    from sslnlp.data.segments import SegmentBlocks, SegmentLayout

    texts = documents[:40]
    layout = SegmentLayout.encoder(wordpiece_tokenizer, 12, 4, pairs=True)
    chunks = list(SegmentBlocks(load_corpus(texts), wordpiece_tokenizer, 64, layout=layout, repeat=False).iter_shard(0))
    rows = [(ids, mask, document) for chunk in chunks
            for ids, mask, document in zip(chunk["input_ids"], chunk["attention_mask"], chunk["document"])]
    expected, owners = [], []
    for number, text in enumerate(texts):
        ids = wordpiece_tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = [ids[start: start + 12] for start in range(0, len(ids), 12) if len(ids[start: start + 12]) >= 4]
        for pair in range(len(pieces) // 2):  # segments 0 and 1, 2 and 3, ...; an unpaired last one is dropped
            expected.append((pieces[2 * pair], pieces[2 * pair + 1]))
            owners.append(number)
    assert [(list(ids[0][mask[0]][1:-1]), list(ids[1][mask[1]][1:-1])) for ids, mask, _ in rows] == expected
    assert len(set(owners)) > 10 and len(expected) > len(set(owners))  # documents with one pair and with several
    documents_of = [int(document) for _, _, document in rows]
    for a in range(len(rows)):
        for b in range(len(rows)):
            assert (documents_of[a] == documents_of[b]) == (owners[a] == owners[b])
    batch = {"input_ids": torch.from_numpy(chunks[0]["input_ids"][:5]).long(),
             "attention_mask": torch.from_numpy(chunks[0]["attention_mask"][:5]),
             "document": torch.from_numpy(chunks[0]["document"][:5])}
    out = SegmentCollator()(batch)  # 2B rows: the five first segments, then the five second ones
    assert torch.equal(out["input_ids"][:5, :14], batch["input_ids"][:, 0, :14])
    assert torch.equal(out["input_ids"][5:, :14], batch["input_ids"][:, 1, :14])
    assert torch.equal(out["document"], batch["document"])


def test_other_pairs_of_the_same_document_are_not_negatives(wordpiece_tokenizer):
    import torch.nn.functional as F

    from sslnlp.config import ModelConfig
    from sslnlp.models.pooling import pool
    from sslnlp.models.modeling import build_model_config
    from sslnlp.objectives.simcse import SimCSE, SimCSEConfig

    options = ModelConfig(model_type="bert", config_overrides={"hidden_size": 32, "num_hidden_layers": 2,
                                                                "num_attention_heads": 2, "intermediate_size": 64})
    torch.manual_seed(0)
    objective = SimCSE(SimCSEConfig(positives="adjacent", dropout=0.0, temperature=0.5), options)
    model = objective.build_model(build_model_config(options, wordpiece_tokenizer, 16)).eval()
    batch = {"input_ids": torch.randint(5, len(wordpiece_tokenizer), (8, 10)), "attention_mask": torch.ones(8, 10, dtype=torch.long),
             "document": torch.tensor([7, 7, 8, 9])}  # 4 pairs, the first two from one document
    assert objective.count(batch) == {"contrastive": 4}
    with torch.no_grad():
        loss = objective.loss(model, batch).sums["contrastive"]
        views = model(batch["input_ids"], batch["attention_mask"])
        logits = F.normalize(views["view_1"], dim=-1) @ F.normalize(views["view_2"], dim=-1).T / 0.5
        second = pool(model.model(input_ids=batch["input_ids"][4:]).last_hidden_state, batch["attention_mask"][4:], "mean")
    torch.testing.assert_close(views["view_2"], second)  # the rows are the views: the second segments, not copies
    allowed = torch.ones(4, 4, dtype=torch.bool)
    allowed[0, 1] = allowed[1, 0] = False  # pair 0's candidates exclude pair 1's second segment, and the reverse
    expected = sum(-torch.log_softmax(logits[row][allowed[row]], 0)[int(allowed[row][:row].sum())] for row in range(4))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    everything = sum(-torch.log_softmax(logits[row], 0)[row] for row in range(4))
    assert float(loss) < float(everything) - 1e-3


@pytest.mark.parametrize("positives", ["adjacent", "dropout"])
def test_the_shared_pass_scores_the_masked_rows_once_for_both_losses(wordpiece_tokenizer, positives):
    import torch.nn.functional as F

    from sslnlp.config import ModelConfig
    from sslnlp.models.pooling import pool
    from sslnlp.models.modeling import build_model_config
    from sslnlp.objectives.simcse import SimCSE, SimCSEConfig

    options = ModelConfig(model_type="bert", config_overrides={"hidden_size": 32, "num_hidden_layers": 2,
                                                                "num_attention_heads": 2, "intermediate_size": 64})
    torch.manual_seed(0)
    objective = SimCSE(SimCSEConfig(positives=positives, dropout=0.0, mlm_weight=1.0, mlm_probability=0.3,
                                    shared_pass=True), options)
    model = objective.build_model(build_model_config(options, wordpiece_tokenizer, 16)).eval()
    rows = 8 if positives == "adjacent" else 4
    raw = {"input_ids": torch.randint(5, len(wordpiece_tokenizer), (rows, 12)), "attention_mask": torch.ones(rows, 12, dtype=torch.bool)}
    raw["attention_mask"][1, 9:] = False
    if positives == "adjacent":
        raw = {"input_ids": raw["input_ids"].view(2, 4, 12).transpose(0, 1), "attention_mask": raw["attention_mask"].view(2, 4, 12).transpose(0, 1),
               "document": torch.arange(4)}
    batch = objective.build_collator(wordpiece_tokenizer, seed=0)(raw)
    with torch.no_grad():
        loss = objective.loss(model, batch, with_metrics=True)
        objective.close()  # the hook off: the model's ordinary (dense) forward is the reference
        masked = batch["mlm_input_ids"]
        seen = masked if positives == "adjacent" else torch.cat([masked, batch["input_ids"]])
        mask = torch.cat([batch["attention_mask"]] * (len(seen) // len(batch["attention_mask"])))
        hidden = model.model.base_model(input_ids=seen, attention_mask=mask).last_hidden_state
        view_1, view_2 = F.normalize(pool(hidden, mask, "mean"), dim=-1).chunk(2)
        contrastive = F.cross_entropy(view_1 @ view_2.T / 0.05, torch.arange(len(view_1)), reduction="sum")
        logits = model.model(input_ids=masked, attention_mask=batch["attention_mask"]).logits
        keep = batch["mlm_labels"] != -100
        mlm = F.cross_entropy(logits[keep], batch["mlm_labels"][keep], reduction="sum")
    assert int(keep.sum()) > 5
    assert float(loss.sums["contrastive"]) == pytest.approx(float(contrastive), rel=1e-4)
    assert float(loss.sums["mlm"]) == pytest.approx(float(mlm), rel=1e-4)


def test_the_two_views_differ_by_dropout_only(wordpiece_tokenizer):
    from sslnlp.config import ModelConfig
    from sslnlp.models.modeling import build_model_config
    from sslnlp.objectives.simcse import SimCSE, SimCSEConfig

    options = ModelConfig(model_type="bert", config_overrides={"hidden_size": 32, "num_hidden_layers": 2,
                                                                "num_attention_heads": 2, "intermediate_size": 64})
    batch = {"input_ids": torch.randint(5, len(wordpiece_tokenizer), (6, 10)), "attention_mask": torch.ones(6, 10, dtype=torch.long)}
    for dropout, mode, same in ((0.0, "train", True), (0.1, "train", False), (0.1, "eval", True)):
        torch.manual_seed(0)
        objective = SimCSE(SimCSEConfig(dropout=dropout), options)
        model = objective.build_model(build_model_config(options, wordpiece_tokenizer, 16))
        model.train(mode == "train")
        out = model(**batch)
        assert torch.equal(out["view_1"], out["view_2"]) == same, (dropout, mode)
        assert model.model.config.hidden_dropout_prob == dropout == model.model.config.attention_probs_dropout_prob


def test_loss_falls_resume_is_exact_and_sentence_transformers_load_the_export(corpus_file, wordpiece_dir, tmp_path):
    full = run(tmp_path / "full", wordpiece_dir, corpus_file, 30, **{"training.save_steps": 10, "training.logging_steps": 5,
                                                                      "training.save_total_limit": 5})
    losses = [r["loss"] for r in map(json.loads, open(tmp_path / "full" / "metrics.jsonl")) if "loss" in r]
    assert losses[-1] < 0.5 * losses[0] and full["eval_contrastive_accuracy"] > 0.9
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000010",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-00000010")
    run(tmp_path / "resumed", wordpiece_dir, corpus_file, 30, **{"training.save_steps": 10, "training.logging_steps": 5,
                                                                  "training.resume_from_checkpoint": "auto"})
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "resumed" / "model.safetensors").read_bytes()

    sentence_transformers = pytest.importorskip("sentence_transformers")
    from transformers import AutoModel, AutoTokenizer

    from sslnlp.models.pooling import pool

    texts = ["The cat sees the red ball.", "A tired farmer builds a wooden house near the station.", "Hello"]
    encoded = torch.tensor(sentence_transformers.SentenceTransformer(str(tmp_path / "full"), device="cpu").encode(texts))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "full")
    model = AutoModel.from_pretrained(tmp_path / "full").eval()
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = pool(model(**inputs).last_hidden_state, inputs["attention_mask"], "mean")
    torch.testing.assert_close(encoded, ours, rtol=1e-5, atol=1e-6)


def test_the_contrastive_loss_sees_the_global_batch_under_two_processes(tmp_path):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run([ACCELERATE, "launch", "--config_file", str(REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"),
                             "--multi_gpu", str(REPO / "tests" / "simcse_gather_check.py"), str(tmp_path / "out.json")],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads((tmp_path / "out.json").read_text())
    assert measured["world"] == 2 and measured["gradient"] > 0
    assert measured["gathered"] == pytest.approx(measured["one_process"], rel=1e-5)  # 8 segments, 4 per rank
    assert measured["local_only"] < 0.8 * measured["one_process"]  # 3 negatives instead of 7: an easier task
    # adjacent pairs: a pair of the same document on the other rank is left out of the negatives too
    assert measured["paired_gathered"] == pytest.approx(measured["paired_one_process"], rel=1e-5)


def test_simcse_continues_an_mlm_run_and_the_joint_objective_trains_both(corpus_file, wordpiece_dir, tmp_path):
    from transformers import pipeline

    pretrain(load_config(PretrainConfig, None, tiny_overrides(tmp_path / "mlm", wordpiece_dir, steps=10, **{
        "data.train_files": corpus_file, "data.max_seq_length": 64, "model.config_overrides": SIMCSE["model.config_overrides"]})))
    continued = run(tmp_path / "simcse", wordpiece_dir, corpus_file, 10, **{
        "model.model_name_or_path": str(tmp_path / "mlm"), "model.config_overrides": "{}",
        "tokenizer.tokenizer_name_or_path": str(tmp_path / "mlm"), "objective.dropout": 0.3})
    assert continued["steps"] == 10
    # dropout 0.3 was the augmentation; the export keeps the MLM model's own dropout for whoever fine-tunes it
    source, exported = (json.loads((tmp_path / name / "config.json").read_text()) for name in ("mlm", "simcse"))
    assert exported["hidden_dropout_prob"] == source["hidden_dropout_prob"] == 0.1
    assert exported["attention_probs_dropout_prob"] == source["attention_probs_dropout_prob"]
    assert "objective.dropout=0.3" in (tmp_path / "simcse" / "config.yaml").read_text() or \
        "dropout: 0.3" in (tmp_path / "simcse" / "config.yaml").read_text()
    joint = run(tmp_path / "joint", wordpiece_dir, corpus_file, 20, **{"objective.mlm_weight": 1.0,
                                                                         "objective.contrastive_weight": 0.1,
                                                                         "training.logging_steps": 5})
    records = [json.loads(line) for line in open(tmp_path / "joint" / "metrics.jsonl")]
    windows = [r for r in records if "loss" in r]
    assert windows[-1]["mlm_loss"] < windows[0]["mlm_loss"] and windows[-1]["contrastive_loss"] < windows[0]["contrastive_loss"]
    assert windows[0]["loss"] == pytest.approx(windows[0]["mlm_loss"] + 0.1 * windows[0]["contrastive_loss"], rel=1e-6)
    assert "eval_mlm_accuracy" in joint and "eval_contrastive_accuracy" in joint
    fill = pipeline("fill-mask", model=str(tmp_path / "joint"))  # the joint export keeps its masked-LM head
    assert len(fill(f"The cat sees the {fill.tokenizer.mask_token}.")) == 5
    assert (tmp_path / "joint" / "1_Pooling" / "config.json").is_file()


def test_adjacent_segments_of_topical_documents_are_learned_in_one_shared_pass(wordpiece_dir, tmp_path):
    import random

    import textgen

    # each document keeps one subject and one object throughout: its adjacent segments share them, other documents
    # mostly do not (textgen's own documents draw every sentence independently: nothing to learn there)
    rng = random.Random(0)
    texts = []
    for _ in range(400):
        subject, thing = rng.choice(textgen.SUBJECTS), rng.choice(textgen.OBJECTS)
        texts.append(" ".join(f"{subject.capitalize()} {rng.choice(textgen.VERBS)} {thing} {rng.choice(textgen.PLACES)}."
                              for _ in range(rng.randint(4, 8))))
    corpus = tmp_path / "topical.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    summary = run(tmp_path / "shared", wordpiece_dir, str(corpus), 60, **{
        "objective.mlm_weight": 1.0, "objective.contrastive_weight": 1.0, "objective.positives": "adjacent",
        "objective.shared_pass": "true", "objective.dropout": 0.0, "objective.max_segment_tokens": 12,
        "objective.min_segment_tokens": 4, "training.logging_steps": 10, "training.per_device_train_batch_size": 16})
    windows = [r for r in map(json.loads, open(tmp_path / "shared" / "metrics.jsonl")) if "loss" in r]
    assert windows[-1]["mlm_loss"] < windows[0]["mlm_loss"]
    assert windows[-1]["contrastive_loss"] < 0.7 * windows[0]["contrastive_loss"]
    assert summary["eval_contrastive_accuracy"] > 3 / 16  # each of 16 held-out pairs finds its partner: chance 1/16


def test_adjacent_pairs_resume_exactly_with_blocks_in_the_shuffle_buffer(wordpiece_tokenizer, documents):
    """A checkpoint taken while the shuffle buffer holds pairs (with their document ids) resumes into the same batches
    (the buffer goes through JSON, as in a checkpoint's rank state)."""
    from sslnlp.data.blocks import BlockStream
    from sslnlp.data.corpus import load_corpus
    from sslnlp.data.segments import SegmentBlocks, SegmentLayout

    layout = SegmentLayout.encoder(wordpiece_tokenizer, 12, 4, pairs=True)

    def stream():
        return BlockStream(SegmentBlocks(load_corpus(documents[:60]), wordpiece_tokenizer, 64, layout=layout), 4,
                           shuffle_buffer_size=32, seed=3)

    whole = iter(stream())
    expected = [next(whole) for _ in range(8)]
    interrupted = stream()
    batches = iter(interrupted)
    for _ in range(3):
        next(batches)
    state = json.loads(json.dumps(interrupted.state_dict()))
    assert state["buffer"] and all("document" in block for block in state["buffer"])
    resumed = stream()
    resumed.load_state_dict(state)
    batches = iter(resumed)
    for want in expected[3:]:
        got = next(batches)
        assert set(got) == set(want) and all(torch.equal(got[key], want[key]) for key in want)
