"""Unsupervised SimCSE (Gao et al. 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings"):
contrastive sentence embeddings with dropout as the only augmentation (or adjacent segments of a document as the
positive pair); alone or joined with masked LM.

    objective: {name: simcse, temperature: 0.05, pooling: mean, dropout: 0.1, max_segment_tokens: 32}
    objective: {name: simcse, mlm_weight: 1.0, contrastive_weight: 0.1}     # masked LM + contrastive, from scratch
    objective: {name: simcse, positives: adjacent, mlm_weight: 1.0, shared_pass: true}   # one pass for both
    model: {model_name_or_path: runs/cram-cpu}                               # the usual use: MLM first, then this

- Views: each document is cut into segments of at most ``max_segment_tokens`` tokens, never across documents (a view
  is one piece of text); a batch holds segments of about one length (packing.BlockStream's length bucketing), trimmed
  to its longest, so padding stays small. Each segment goes through the encoder twice, in one forward pass of the
  duplicated batch: dropout draws two masks, so the two views differ by dropout only. ``positives: adjacent``: a
  row is two consecutive segments of one document (packing.SegmentPacker's pairs), the first segment is view 1 and
  the second view 2, each passed once; pairs of the same document (by a checksum of its tokens) are masked out of
  each other's negatives, across ranks too.
- Loss: InfoNCE at ``temperature`` on cosine similarities of the pooled views (mean over tokens, or the first
  token): view 1 of segment i must pick view 2 of segment i among view 2 of every segment of the *global* batch.
  Embeddings are gathered from every rank; the local part keeps its gradient, the gathered copies are constants (each
  rank backpropagates the loss of its own rows), so the negatives are the global batch.
- Joint (``mlm_weight`` > 0, SimCSE's ``--do_mlm``): a masked copy of each segment (``mlm_probability``, 80/10/10)
  also trains the masked-LM head; the loss is contrastive_weight x InfoNCE + mlm_weight x MLM, each normalised by its
  own targets. The model is then an AutoModelForMaskedLM and exports as one (fill-mask works). ``shared_pass``: the
  masked copy is itself a view (with dropout positives, the unmasked segment is the other), so one encoder pass
  gives both losses, the MLM head running on the masked positions only (modeling.SparseMaskedLMHead keeping the
  full hidden states for the pooling).
- Held-out evaluation runs without dropout: with dropout positives both views are then the same vector, so the
  held-out loss says how well a segment is told apart from the other segments of its (local) batch; with adjacent
  positives it says how well the next segment is found among them.
- data.attention_within_documents changes nothing here: a row is one segment of one document with positions from 0,
  so attention and positions already stay within it (accepted rather than refused, so a recipe or an override
  shared with a packed-MLM stage keeps working).
- Export: the encoder in Hugging Face format plus the sentence-transformers files (modules.json,
  sentence_bert_config.json, 1_Pooling/config.json, config_sentence_transformers.json), so
  ``SentenceTransformer(path).encode(texts)`` gives the pooled vectors this objective trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sslnlp.config import ConfigError, ObjectiveConfig, option
from sslnlp.models.pooling import pool
from sslnlp.data.masking import MaskedLanguageModelingCollator
from sslnlp.models.modeling import SparseMaskedLMHead, build_model, check_head, flops_per_token
from sslnlp.objectives.base import Objective, ObjectiveLoss, register_objective
from sslnlp.data.segments import SegmentLayout

POOLINGS = ("mean", "first")
POSITIVES = ("dropout", "adjacent")
# Config keys of dropout in the encoder families sslnlp trains (whichever the architecture has is set).
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "mlp_dropout",
                "embedding_dropout", "dropout")


@dataclass
class SimCSEConfig(ObjectiveConfig):
    name: str = option("simcse", "Unsupervised SimCSE: contrastive sentence embeddings, dropout as the augmentation.")
    temperature: float = option(0.05, "InfoNCE temperature on cosine similarities (the paper: 0.05).")
    pooling: str = option("mean", "Sentence vector: 'mean' over tokens or 'first' (the [CLS] token).")
    positives: str = option("dropout", "The positive pair: 'dropout' (a segment and itself, two dropout draws: "
                                       "SimCSE) or 'adjacent' (a segment and the next one of its document: a "
                                       "harder pair that shares topic, not surface form; rows of the same document "
                                       "are not used as negatives).")
    dropout: float = option(0.1, "Dropout set on the encoder (hidden, attention, MLP, embeddings: whichever the "
                                 "architecture has): the augmentation that makes the two views differ.")
    max_segment_tokens: int = option(32, "Segments (views) cut from each document: at most this many tokens.")
    min_segment_tokens: int = option(8, "Shorter segments (a document's tail) are dropped.")
    gather_across_ranks: bool = option(True, "Negatives from the global batch (embeddings gathered from every rank).")
    contrastive_weight: float = option(1.0, "Weight of the contrastive (InfoNCE) loss.")
    mlm_weight: float = option(0.0, "Weight of a masked-LM loss on a masked copy of each segment (0: none; the "
                                    "paper's --do_mlm uses 0.1 beside contrastive 1).")
    mlm_probability: float = option(0.15, "Joint objective: fraction of tokens masked in the MLM copy.")
    eval_mlm_probability: float = option(0.15, "Joint objective: masking rate of held-out evaluation (fixed, so runs "
                                               "compare).")
    shared_pass: bool = option(False, "Joint objective: one encoder pass serves both losses: the masked copy is also "
                                      "the contrastive view (masking joins dropout as the augmentation; with "
                                      "'dropout' positives the other view is the unmasked segment), and the MLM head "
                                      "runs on the masked positions only (a sparse head). Saves one or two of the "
                                      "three passes per segment.")

    def check(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"objective.pooling={self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if self.positives not in POSITIVES:
            raise ConfigError(f"objective.positives={self.positives!r}; choose one of {', '.join(POSITIVES)}")
        if self.temperature <= 0:
            raise ConfigError(f"objective.temperature={self.temperature} must be > 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"objective.dropout={self.dropout} must be in [0, 1)")
        if not 1 <= self.min_segment_tokens <= self.max_segment_tokens:
            raise ConfigError("objective.min_segment_tokens must be in [1, objective.max_segment_tokens]")
        if self.contrastive_weight < 0 or self.mlm_weight < 0 or self.contrastive_weight + self.mlm_weight == 0:
            raise ConfigError("objective.contrastive_weight and objective.mlm_weight must be >= 0, not both 0")
        for key in ("mlm_probability", "eval_mlm_probability"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"objective.{key}={getattr(self, key)} must be in (0, 1)")
        if self.shared_pass and self.mlm_weight <= 0:
            raise ConfigError("objective.shared_pass=true shares the encoder pass between the MLM and the contrastive "
                              "loss: set objective.mlm_weight > 0, or drop shared_pass")


class SegmentCollator:
    """Segments -> model inputs: trimmed to the batch's longest segment (a multiple of 8); with an MLM collator, also
    a masked copy (``mlm_input_ids``, ``mlm_labels``). Rows of segment pairs ([B, 2, L]) become 2B rows, every first
    segment, then every second one, with the rows' ``document``."""

    def __init__(self, masking: MaskedLanguageModelingCollator | None = None):
        self.masking = masking

    def state_dict(self) -> dict:
        return self.masking.state_dict() if self.masking is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.masking is not None and state:
            self.masking.load_state_dict(state)

    def __call__(self, batch: dict) -> dict:
        input_ids, attention = batch["input_ids"], batch["attention_mask"].bool()
        if input_ids.dim() == 3:  # pairs: [B, 2, L] -> [2B, L], the first segments, then the second ones
            input_ids, attention = (x.transpose(0, 1).reshape(-1, x.shape[-1]) for x in (input_ids, attention))
        longest = int(attention.sum(1).max())
        longest = min(-(-longest // 8) * 8, attention.shape[1])
        out = {"input_ids": input_ids[:, :longest].long(), "attention_mask": attention[:, :longest].long()}
        if "document" in batch:
            out["document"] = batch["document"].long()
        if self.masking is not None:
            masked = self.masking({"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]})
            out["mlm_input_ids"], out["mlm_labels"] = masked["input_ids"], masked["labels"]
        return out


def gather_with_local_gradient(embeddings: torch.Tensor) -> tuple[torch.Tensor, int]:
    """([world x B, ...] every rank's rows, this rank's offset in it); this rank's rows keep their gradient (a tensor
    without gradient, such as document ids, is simply gathered)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings, 0
    parts = [torch.empty_like(embeddings) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, embeddings.detach().contiguous())
    rank = dist.get_rank()
    parts[rank] = embeddings
    return torch.cat(parts), rank * len(embeddings)


class ContrastiveEncoder(torch.nn.Module):
    """The trained model with its pooling, as one module so Accelerate prepares and (under DDP) synchronises it;
    ``forward`` returns both views' pooled vectors (and the MLM logits of the masked copy when given). With
    ``paired`` the batch already holds both views (2B rows: first segments, then second ones); otherwise each row is
    passed twice."""

    def __init__(self, model, pooling: str, paired: bool = False, sparse_head: SparseMaskedLMHead | None = None):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.paired = paired
        self.has_head = model is not model.base_model
        self.sparse_head = sparse_head  # set: the shared pass (the masked copy is a view; the head sees masked rows)

    def forward(self, input_ids, attention_mask, mlm_input_ids=None, mlm_labels=None) -> dict:
        if self.sparse_head is not None and mlm_input_ids is not None:
            return self.shared_pass(input_ids, attention_mask, mlm_input_ids, mlm_labels)
        rows = {"input_ids": input_ids, "attention_mask": attention_mask} if self.paired else \
            {"input_ids": torch.cat([input_ids, input_ids]), "attention_mask": torch.cat([attention_mask, attention_mask])}
        encoder = self.model.base_model if self.has_head else self.model
        hidden = encoder(**rows).last_hidden_state  # [2B, L, H]: one dropout draw per row
        views = pool(hidden, rows["attention_mask"], self.pooling).float().chunk(2)
        out = {"view_1": views[0], "view_2": views[1]}
        if mlm_input_ids is not None:
            out["mlm_logits"] = self.model(input_ids=mlm_input_ids, attention_mask=attention_mask).logits
        return out

    def shared_pass(self, input_ids, attention_mask, mlm_input_ids, mlm_labels) -> dict:
        """One pass over the masked rows (and, for dropout positives, the unmasked ones as the second views): the
        pooled vectors of every row, and the MLM loss of the masked positions through the sparse head."""
        if self.paired:
            rows, mask, labels = mlm_input_ids, attention_mask, mlm_labels
        else:
            rows, mask = torch.cat([mlm_input_ids, input_ids]), torch.cat([attention_mask, attention_mask])
            labels = torch.cat([mlm_labels, torch.full_like(mlm_labels, -100)])
        self.sparse_head.hidden = None
        loss_sum, logits, targets = self.sparse_head.forward(self.model, {"input_ids": rows, "attention_mask": mask,
                                                                          "labels": labels})
        hidden, self.sparse_head.hidden = self.sparse_head.hidden, None
        views = pool(hidden, mask, self.pooling).float().chunk(2)
        return {"view_1": views[0], "view_2": views[1], "mlm_sum": loss_sum, "mlm_logits": logits,
                "mlm_targets": targets}


@register_objective
class SimCSE(Objective):
    name = "simcse"
    Config = SimCSEConfig
    encoder = True
    pipeline_tag = "sentence-similarity"
    supports_attention_within_documents = True  # already true of its unpacked segments: see the module docstring
    train_metrics = True  # the contrastive accuracy (view 2 picked among the batch) is logged every window

    def __init__(self, config, model_options=None):
        super().__init__(config, model_options)
        self.sparse_head: SparseMaskedLMHead | None = None  # the shared pass's head (build_model)
        self.model_dropout: dict[str, float] = {}  # the model's own dropout values, restored in the export

    @property
    def contrasts_across_ranks(self) -> bool:
        return self.config.gather_across_ranks

    def weights(self) -> dict[str, float]:
        terms = {"contrastive": self.config.contrastive_weight}
        if self.config.mlm_weight > 0:
            terms["mlm"] = self.config.mlm_weight
        return {term: weight for term, weight in terms.items() if weight > 0}

    @property
    def paired(self) -> bool:
        return self.config.positives == "adjacent"

    def block_layout(self, tokenizer):
        return SegmentLayout.encoder(tokenizer, self.config.max_segment_tokens, self.config.min_segment_tokens,
                                     pairs=self.paired)

    def check_model_config(self, model_config) -> None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

        if self.config.mlm_weight > 0:
            check_head(model_config, MODEL_FOR_MASKED_LM_MAPPING_NAMES, "masked-LM (simcse with mlm_weight > 0)",
                       "an encoder such as bert, roberta or modernbert")
        else:
            check_head(model_config, MODEL_MAPPING_NAMES, "encoder (simcse)", "an encoder such as bert or modernbert")
        if getattr(model_config, "is_decoder", False) or model_config.model_type in ("gpt2", "llama", "qwen2"):
            raise ConfigError(f"objective.name=simcse needs an encoder (bidirectional attention), not "
                              f"{model_config.model_type}")

    def build_model(self, model_config):
        from transformers import AutoModel, AutoModelForMaskedLM

        # the augmentation: set on whichever dropout the architecture has, for training only (the export keeps the
        # model's own values, so fine-tuning it later runs with the dropout it had, as its MLM twin does)
        self.model_dropout = {key: getattr(model_config, key) for key in DROPOUT_KEYS
                              if isinstance(getattr(model_config, key, None), float)}
        for key in self.model_dropout:
            setattr(model_config, key, self.config.dropout)
        auto = AutoModelForMaskedLM if self.config.mlm_weight > 0 else AutoModel
        model = build_model(self.model_options, model_config, auto)
        if getattr(model, "pooler", None) is not None:  # BERT's [CLS] pooler: unused here (DDP requires every
            model.pooler = None                         # parameter to get a gradient), and not exported
        if self.config.shared_pass:
            self.sparse_head = SparseMaskedLMHead(model, keep_hidden=True)
        return ContrastiveEncoder(model, self.config.pooling, self.paired, self.sparse_head)

    def close(self) -> None:
        if self.sparse_head is not None:
            self.sparse_head.handle.remove()
            self.sparse_head = None

    def representation_model(self, model):
        return model.model

    def build_collator(self, tokenizer, *, seed: int, evaluation=None):
        if self.config.mlm_weight <= 0:
            return SegmentCollator()
        probability = self.config.eval_mlm_probability if evaluation is not None else self.config.mlm_probability
        return SegmentCollator(MaskedLanguageModelingCollator.from_tokenizer(tokenizer, seed=seed,
                                                                             mlm_probability=probability))

    def count(self, batch: dict) -> dict[str, int]:
        counts = {"contrastive": len(batch["input_ids"]) // (2 if self.paired else 1)}
        if self.config.mlm_weight > 0:
            counts["mlm"] = int((batch["mlm_labels"] != -100).sum())
        return {term: counts[term] for term in self.weights()}

    def loss(self, model, batch: dict, with_metrics: bool = False) -> ObjectiveLoss:
        joint = "mlm" in self.weights()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    mlm_input_ids=batch.get("mlm_input_ids") if joint else None,
                    mlm_labels=batch.get("mlm_labels") if joint else None)
        view_1, view_2 = F.normalize(out["view_1"], dim=-1), F.normalize(out["view_2"], dim=-1)
        # Training gathers the negatives of every rank (each rank calls this equally often); held-out batches (whose
        # number may differ between ranks) use the local batch.
        gather = model.training and self.config.gather_across_ranks
        candidates, offset = gather_with_local_gradient(view_2) if gather else (view_2, 0)
        logits = view_1 @ candidates.T / self.config.temperature  # [B, world x B]
        targets = torch.arange(len(view_1), device=logits.device) + offset
        if "document" in batch:  # adjacent pairs: another pair of the same document is no negative
            documents = batch["document"]
            every = gather_with_local_gradient(documents)[0] if gather else documents
            same = documents[:, None] == every[None, :]
            same[torch.arange(len(view_1), device=logits.device), targets] = False
            logits = logits.masked_fill(same, float("-inf"))
        sums = {"contrastive": F.cross_entropy(logits, targets, reduction="sum")}
        metrics = {"contrastive_accuracy": ((logits.argmax(-1) == targets).sum(), "contrastive")} if with_metrics else {}
        if joint and "mlm_sum" in out:  # the shared pass computed it on the masked positions
            sums["mlm"] = out["mlm_sum"]
            if with_metrics:
                metrics["mlm_accuracy"] = ((out["mlm_logits"].argmax(-1) == out["mlm_targets"]).sum(), "mlm")
        elif joint:
            labels = batch["mlm_labels"].reshape(-1)
            keep = labels != -100
            predicted = out["mlm_logits"].reshape(-1, out["mlm_logits"].shape[-1])[keep].float()
            sums["mlm"] = F.cross_entropy(predicted, labels[keep], reduction="sum")
            if with_metrics:
                metrics["mlm_accuracy"] = ((predicted.argmax(-1) == labels[keep]).sum(), "mlm")
        return ObjectiveLoss({term: sums[term] for term in self.weights()}, metrics)

    def flops_per_token(self, model_config, sequence_length: int) -> float:
        length = min(sequence_length, self.config.max_segment_tokens + 2)
        # dropout views: every token (counted once) is encoded twice; adjacent pairs: each token is in one view
        passes = 1 if self.paired else 2
        if self.config.shared_pass:  # one of those passes is the masked copy, its head on the masked positions
            return (passes - 1) * flops_per_token(model_config, length, 0.0) + flops_per_token(
                model_config, length, self.config.mlm_probability)
        flops = passes * flops_per_token(model_config, length, 0.0)
        if self.config.mlm_weight > 0:
            flops += flops_per_token(model_config, length, 1.0)  # the masked copy, dense head
        return flops

    def export(self, accelerator, model, tokenizer, output_dir) -> None:
        """The encoder (an AutoModelForMaskedLM in the joint objective) and the sentence-transformers files."""
        from sslnlp.models.export import without_tied_aliases

        state = accelerator.get_state_dict(model)
        wrapper = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            inner = without_tied_aliases(wrapper.model, {key[len("model."):]: value for key, value in state.items()
                                                         if key.startswith("model.")})  # FSDP: copies, not ties
            config = wrapper.model.config
            training_dropout = {key: getattr(config, key) for key in self.model_dropout}
            config.update(self.model_dropout)
            try:
                wrapper.model.save_pretrained(output_dir, state_dict=inner, safe_serialization=True)
            finally:
                config.update(training_dropout)
            tokenizer.save_pretrained(output_dir)
            write_sentence_transformers_files(output_dir, wrapper.model.config, self.config.pooling,
                                              max_seq_length=self.config.max_segment_tokens + 2)
        accelerator.wait_for_everyone()

    def describe(self) -> str:
        config = self.config
        views = (f"adjacent segments of a document (dropout {config.dropout:g})" if self.paired else
                 f"views differing by dropout {config.dropout:g}")
        text = (f"unsupervised SimCSE: InfoNCE at temperature {config.temperature:g} over {config.pooling}-pooled "
                f"{views}, segments of {config.min_segment_tokens}-"
                f"{config.max_segment_tokens} tokens, negatives from the "
                f"{'global' if config.gather_across_ranks else 'local'} batch")
        if config.mlm_weight > 0:
            text += (f"; joint with masked LM ({config.mlm_probability:g} masked): loss = {config.contrastive_weight:g}"
                     f" x contrastive + {config.mlm_weight:g} x MLM")
        return text

    def card_text(self) -> str:
        pair = ("a segment and the next one of its document agree" if self.paired
                else "two dropout views of a segment agree")
        return f"sentence-embedding encoder trained contrastively (SimCSE: {pair})"

    def usage(self, repo_id: str, revision_argument: str, mask_token: str) -> list[str]:
        return ["from sentence_transformers import SentenceTransformer", "",
                f'model = SentenceTransformer("{repo_id}"{revision_argument})',
                'embeddings = model.encode(["A sentence to embed.", "Another one."])',
                "print(model.similarity(embeddings, embeddings))  # cosine similarities", "",
                "# or with transformers: AutoModel, then the pooling in 1_Pooling/config.json"]


def write_sentence_transformers_files(output_dir, model_config, pooling: str, max_seq_length: int) -> None:
    """The files ``SentenceTransformer(output_dir)`` reads beside a Hugging Face model: a Transformer module (the
    model in output_dir) followed by a Pooling module (``pooling`` over its last hidden states), cosine similarity.
    Written in the long-standing layout (sentence-transformers 2.x to 6.x load it)."""
    output_dir = Path(output_dir)
    (output_dir / "1_Pooling").mkdir(parents=True, exist_ok=True)
    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "config_sentence_transformers.json": {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
        "1_Pooling/config.json": {"word_embedding_dimension": model_config.hidden_size,
                                  "pooling_mode_cls_token": pooling == "first",
                                  "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
                                  "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                                  "pooling_mode_lasttoken": False, "include_prompt": True},
    }
    for name, content in files.items():
        (output_dir / name).write_text(json.dumps(content, indent=2) + "\n")
