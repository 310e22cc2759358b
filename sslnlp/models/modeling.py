"""Hugging Face models for pretraining: built from a config or a checkpoint; losses; FLOPs per token.

Models are always ``transformers`` architectures (``AutoModelForMaskedLM`` / ``AutoModelForCausalLM``), never our
own transformer. What we add is the sparse masked-LM loss: the output head (transform + vocabulary projection) runs
on the masked positions only, for any encoder family, by narrowing the encoder's output to those positions before
the head sees it. With 15% masking and a 30k vocabulary that removes most of the head's FLOPs.
"""

from __future__ import annotations

import logging
import torch
import torch.nn.functional as F

from sslnlp.data.documents import additive_mask, document_attention_mask, document_position_ids, varlen_lengths

logger = logging.getLogger(__name__)

# Model types whose learned position table reserves the first (padding_idx + 1) rows.
OFFSET_POSITION_MODEL_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod", "ernie_m"}
# data.attention_within_documents: the architectures that take per-document position_ids and pass a prepared 4D
# attention mask (ModernBERT: a dict of them, one per layer type) through transformers.masking_utils unchanged, each
# checked against its documents run alone by tests/test_documents.py (sdpa and eager, on a CPU); their forwards also
# hand keyword arguments (flash-attention's cu_seq_lens) down to the attention function. Others are refused before
# training (check_document_attention).
DOCUMENT_ATTENTION_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "modernbert", "gpt2", "llama"}
CAUSAL_MODEL_TYPES = {"gpt2", "llama"}


class ModelError(ValueError):
    """A user mistake about the model: one line naming the setting and what to do."""


def check_head(config, mapping_names: dict, head: str, suggestion: str) -> None:
    """Fail with one line when ``config.model_type`` has no ``head`` in transformers' auto mapping ``mapping_names``
    (e.g. MODEL_FOR_MASKED_LM_MAPPING_NAMES); an objective calls this for the head it needs."""
    if config.model_type not in mapping_names:
        raise ModelError(f"model type {config.model_type!r} has no {head} head; use {suggestion}")


def usable_positions(config) -> int | None:
    """How many tokens a sequence may have under this config's position embeddings (None: unlimited)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if value:
            if config.model_type in OFFSET_POSITION_MODEL_TYPES:
                return value - (config.pad_token_id or 0) - 1
            return value
    return None


def build_model_config(model_options, tokenizer, max_seq_length: int):
    """The transformers config for a run, checked against the tokenizer and sequence length (the objective checks
    that the architecture has the head it needs: ``check_head``).

    Args:
        model_options: a ``ModelConfig`` (model_type / model_name_or_path, config_overrides, ...).
        tokenizer: the run's tokenizer (vocabulary size and special ids come from it).
        max_seq_length: block length of the data.
    """
    from transformers import AutoConfig

    if model_options.model_name_or_path:
        try:
            config = AutoConfig.from_pretrained(model_options.model_name_or_path, trust_remote_code=model_options.trust_remote_code)
        except Exception as error:
            raise ModelError(f"model.model_name_or_path={model_options.model_name_or_path!r} is not a loadable model "
                             f"({str(error).splitlines()[0][:200]}); give a directory with config.json") from None
        for key, value in model_options.config_overrides.items():
            setattr(config, key, value)
    else:
        multiple = max(1, model_options.pad_vocab_to_multiple_of)
        vocab_size = -(-len(tokenizer) // multiple) * multiple
        special = {name: getattr(tokenizer, f"{name}_id") for name in ("pad_token", "bos_token", "eos_token", "sep_token", "cls_token")}
        special = {f"{name}_id": value for name, value in special.items() if value is not None}
        try:
            config = AutoConfig.for_model(model_options.model_type, vocab_size=vocab_size, **special,
                                          **model_options.config_overrides)
        except ValueError as error:
            raise ModelError(f"model.model_type={model_options.model_type!r}: {str(error).splitlines()[0][:200]}") from None
    if config.vocab_size < len(tokenizer):
        raise ModelError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {config.vocab_size}; "
                         "use the tokenizer the checkpoint was trained with")
    positions = usable_positions(config)
    if positions is not None and max_seq_length > positions:
        raise ModelError(f"data.max_seq_length={max_seq_length} exceeds the model's {positions} positions; lower it or "
                         "raise model.config_overrides.max_position_embeddings")
    return config


def check_document_attention(config, attn_implementation: str) -> None:
    """Fail with one line when this architecture or attention kernel cannot keep attention within documents
    (data.attention_within_documents): an unverified architecture would silently attend across documents."""
    if config.model_type not in DOCUMENT_ATTENTION_MODEL_TYPES:
        raise ModelError(f"data.attention_within_documents is not supported for model type {config.model_type!r} "
                         "(not verified to take per-document position ids and a document attention mask); use one of "
                         f"{', '.join(sorted(DOCUMENT_ATTENTION_MODEL_TYPES))}, or data.attention_within_documents=false")
    if attn_implementation not in ("sdpa", "eager") and not attn_implementation.startswith("flash_attention"):
        raise ModelError(f"data.attention_within_documents works with model.attn_implementation sdpa, eager or "
                         f"flash_attention_2/3, not {attn_implementation!r}")


def model_inputs(model, batch: dict) -> dict:
    """The keyword arguments of ``model(...)`` for a collated batch: everything but ``labels``; with
    ``document_ids`` [B, L] (data.attention_within_documents, sslnlp.data.documents) the model also gets per-document
    ``position_ids`` and attention confined to each document, in the form its attention kernel takes:

    - sdpa: a boolean mask [B, 1, L, L]; eager: the same as an additive float mask. transformers.masking_utils
      (create_bidirectional_mask, create_causal_mask) returns a 4D mask unchanged, and its bidirectional masks never
      look at position ids, so encoders need the mask. ModernBERT takes {layer type: mask}: its sliding-window layers
      get the window too.
    - flash_attention_*: no mask; cu_seq_lens_q/k and max_length_q/k, which select the variable-length kernel for
      any batch size (position ids alone select it for a batch of one row only).

    Position ids start at 0 in each document, at padding_idx + 1 for RoBERTa-like tables (OFFSET_POSITION_MODEL_TYPES).
    The padding attention_mask [B, L] is folded into the document ids (padding is document -1).
    """
    inputs = {key: value for key, value in batch.items() if key not in ("labels", "document_ids")}
    documents = batch.get("document_ids")
    if documents is None:
        return inputs
    inner = getattr(model, "module", model)
    config = inner.config
    inputs.pop("attention_mask", None)
    positions = document_position_ids(documents)
    if config.model_type in OFFSET_POSITION_MODEL_TYPES:
        positions = positions + config.pad_token_id + 1
    inputs["position_ids"] = positions
    implementation = config._attn_implementation
    if implementation.startswith("flash_attention"):
        inputs.update(varlen_lengths(documents))
        return inputs
    if implementation not in ("sdpa", "eager"):
        raise ModelError(f"data.attention_within_documents works with model.attn_implementation sdpa, eager or "
                         f"flash_attention_2/3, not {implementation!r}")
    causal = config.model_type in CAUSAL_MODEL_TYPES or bool(getattr(config, "is_decoder", False))

    def as_kernel_mask(mask):  # [B, 1, L, L] bool -> what the kernel takes
        return mask if implementation == "sdpa" else additive_mask(mask, inner.dtype)

    mask = as_kernel_mask(document_attention_mask(documents, causal=causal))
    if config.model_type == "modernbert":
        masks = {"full_attention": mask}
        if "sliding_attention" in config.layer_types:
            window = document_attention_mask(documents, window=config.sliding_window)
            masks["sliding_attention"] = as_kernel_mask(window)
        inputs["attention_mask"] = masks
    else:
        inputs["attention_mask"] = mask
    return inputs


def refuse_unread_checkpoint(model, loading: dict, key: str, name_or_path: str) -> None:
    """A one-line ModelError when the checkpoint ``model`` was loaded from (``loading``: from_pretrained's
    output_loading_info) has no weight under the name of the architecture's word embeddings: its names are not the
    ones ``model`` reads (e.g. an export of a torch.compile-wrapped model, all named _orig_mod.*), and transformers
    would only warn and go on with random weights. ``key`` names the setting that gave ``name_or_path``.
    Architectures without the accessor (remote code) are let through."""
    try:
        embeddings = model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        return
    name = next((name for name, parameter in model.named_parameters() if parameter is embeddings), None)
    if name in loading.get("missing_keys", ()):
        unexpected = sorted(loading.get("unexpected_keys", ()))
        found = f" (it holds {', '.join(unexpected[:2])}, ...)" if unexpected else ""
        raise ModelError(f"{key}={name_or_path!r} has no weights under the names {type(model).__name__} "
                         f"reads (no {name}{found}): using it would start from random weights; re-export it with "
                         "save_pretrained from the unwrapped model")


def build_model(model_options, config, auto, head: str | None = None, **from_pretrained):
    """Instantiate ``auto`` (an Auto class such as AutoModelForMaskedLM) from ``config`` (random init) or from the
    checkpoint's weights.

    ``head``: the head the objective trains (e.g. "masked-LM"); a checkpoint that lacks trained weights for any of
    the model's parameters is then refused in one line instead of continuing from a randomly initialised head
    (transformers would only warn). Without ``head``, freshly initialised parameters are logged.
    """
    kwargs = {"attn_implementation": model_options.attn_implementation}
    if not model_options.model_name_or_path:
        return auto.from_config(config, trust_remote_code=model_options.trust_remote_code, **kwargs)
    model, loading = auto.from_pretrained(model_options.model_name_or_path, config=config, output_loading_info=True,
                                          trust_remote_code=model_options.trust_remote_code, **kwargs,
                                          **from_pretrained)
    refuse_unread_checkpoint(model, loading, "model.model_name_or_path", model_options.model_name_or_path)
    fresh = sorted(set(loading.get("missing_keys", ())) | {key for key, *_ in loading.get("mismatched_keys", ())})
    if fresh and head:
        shown = ", ".join(fresh[:3]) + (f" and {len(fresh) - 3} more" if len(fresh) > 3 else "")
        raise ModelError(f"model.model_name_or_path={model_options.model_name_or_path!r} has no trained {head} head "
                         f"(not in the checkpoint: {shown}); continue from a checkpoint saved with its {head} head "
                         f"(e.g. the {auto.__name__} export of a pretraining run), or choose an objective it can serve")
    if fresh:
        logger.info("%s: %d parameters not in the checkpoint start fresh (%s)", type(model).__name__, len(fresh),
                    ", ".join(fresh[:3]))
    return model


class SparseMaskedLMHead:
    """Runs an MLM model's head on selected positions only, for any architecture whose head is position-wise.

    A forward hook on the encoder (``model.base_model``) replaces its ``last_hidden_state`` [B, L, H] by the rows
    at ``positions`` [1, N, H]; the model's own head then produces logits [1, N, V]. Call ``forward`` instead of
    ``model(**batch)``.
    """

    def __init__(self, model, keep_hidden: bool = False):
        self.positions: torch.Tensor | None = None
        self.keep_hidden = keep_hidden  # also keep the full last_hidden_state [B, L, H] of the latest forward
        self.hidden: torch.Tensor | None = None
        self.handle = model.base_model.register_forward_hook(self._narrow)

    def _narrow(self, module, inputs, output):
        if self.positions is None:
            return output
        hidden = output[0]  # [B, L, H]
        if self.keep_hidden:
            self.hidden = hidden
        narrowed = hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.positions).unsqueeze(0)  # [1, N, H]
        if isinstance(output, tuple):
            return (narrowed,) + tuple(output[1:])
        output["last_hidden_state"] = narrowed
        return output

    # N is rounded up to a multiple of this with ignored rows: a few distinct [N, V] shapes instead of one per batch.
    # With a new N every step, freed logits buffers never fitted the next ones and a CPU process's heap grew
    # without bound (tiny BERT: RSS 0.95 -> 2.3 GB over 150 steps); rounded, it levels off. ~5% more head rows.
    ROWS_MULTIPLE = 64

    def forward(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed cross-entropy, logits [N, V], targets [N]) over the positions with labels."""
        labels = batch["labels"].reshape(-1)
        positions = torch.nonzero(labels != -100).flatten()  # [N]
        targets = labels.index_select(0, positions)  # [N]
        count = len(positions)
        padded_targets = targets
        if count % self.ROWS_MULTIPLE:  # the extra rows repeat position 0 and carry no target (-100)
            extra = self.ROWS_MULTIPLE - count % self.ROWS_MULTIPLE
            positions = torch.cat([positions, positions.new_zeros(extra)])
            padded_targets = torch.cat([targets, targets.new_full((extra,), -100)])
        self.positions = positions
        try:
            logits = model(**model_inputs(model, batch)).logits.reshape(-1, model_vocab_size(model))  # [N', V], N' >= N
        finally:
            self.positions = None
        loss = F.cross_entropy(logits.float(), padded_targets, reduction="sum")  # -100 rows add nothing
        return loss, logits[:count], targets


def model_vocab_size(model) -> int:
    return getattr(model, "module", model).config.vocab_size


def dense_loss(model, batch: dict, shift: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, logits [N, V], targets [N]) with the model's full head (the reference path).
    ``shift``: position t predicts label t + 1 (next-token prediction)."""
    labels = batch["labels"]
    logits = model(**model_inputs(model, batch)).logits  # [B, L, V]
    if shift:  # position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != -100
    return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"), logits[keep], labels[keep]


def flops_per_token(config, sequence_length: int, predicted_fraction: float = 1.0) -> float:
    """Training FLOPs per input token (forward + backward = 3 x forward), attention included.

    Matrix multiplies: 2 FLOPs per multiply-add. Per layer and token: QKV and output projections 8 h^2, MLP
    2 x 2 h i (x 1.5 for gated MLPs), attention scores and values 4 L h. The vocabulary projection 2 h V (plus the
    MLM transform 2 h^2) runs on ``predicted_fraction`` of the tokens (the sparse head's share).
    """
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    gated = config.model_type in {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "modernbert", "olmo", "phi3"}
    mlp = 2 * 2 * hidden * intermediate * (1.5 if gated else 1.0)
    per_layer = 8 * hidden**2 + mlp + 4 * sequence_length * hidden
    embedding = getattr(config, "embedding_size", None) or hidden  # ELECTRA's head projects to the embedding size
    head = (2 * embedding * config.vocab_size + 2 * hidden * embedding) * predicted_fraction
    return 3.0 * (layers * per_layer + head)


# Dense bf16 / fp16 tensor-core peak FLOP/s (no sparsity) and fp32 (non-tensor-core) peak, by device name fragment.
KNOWN_GPU_PEAK_FLOPS = {
    "H200": (989e12, 67e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12), "A10G": (125e12, 31.2e12),
    "L40S": (362e12, 91.6e12), "L4": (121e12, 30.3e12), "A6000": (155e12, 38.7e12), "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12), "4090": (165e12, 82.6e12), "3090": (71e12, 35.6e12),
}
_measured_cpu_peak: dict[str, float] = {}
# (rows, inner, columns) of the CPU peak measurement: square and the shapes of a transformer's projections.
CPU_PEAK_SHAPES = ((2048, 2048, 2048), (4096, 1024, 4096), (2048, 4096, 2048))


def peak_flops_per_second(device: torch.device, mixed_precision: str, configured: float = 0.0) -> float:
    """Peak FLOP/s of one device, for model FLOPs utilisation: configured > known GPU table > measured on the CPU.

    On a CPU the peak is measured once per process: the best rate of several large matrix multiplies (square and
    rectangular, 1024 to 4096 wide, 17 to 34 GFLOP each) in the run's precision. A single small shape understates the peak (1024 x 1024
    read 0.16 TFLOP/s fp32 on the development machine's 2 cores where 2048 x 2048 reached 0.20), which would
    overstate MFU; the best of several large shapes is the honest ceiling for a CPU run.
    """
    if configured:
        return configured
    low_precision = mixed_precision in ("bf16", "fp16")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, (tensor_core, fp32) in KNOWN_GPU_PEAK_FLOPS.items():
            if fragment in name:
                return tensor_core if low_precision else fp32
        return 0.0
    if device.type != "cpu":
        return 0.0
    key = mixed_precision
    if key not in _measured_cpu_peak:
        import time

        dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float32
        generator = torch.Generator().manual_seed(0)  # never the global RNG: resumed runs must draw what the original did
        best_rate = 0.0
        for rows, inner, columns in CPU_PEAK_SHAPES:
            a = torch.randn(rows, inner, generator=generator).to(dtype)
            b = torch.randn(inner, columns, generator=generator).to(dtype)
            a @ b  # warm up
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - start)
            best_rate = max(best_rate, 2 * rows * inner * columns / best)
        _measured_cpu_peak[key] = best_rate
    return _measured_cpu_peak[key]
