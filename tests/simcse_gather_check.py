"""Run under the real launcher (2 CPU processes) by tests/test_simcse.py: SimCSE's contrastive loss of one fixed
global batch of 8 segments, 4 on each rank, summed over the ranks, against the same 8 segments in one process.

    ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml --multi_gpu \
        tests/simcse_gather_check.py OUTPUT.json
"""

import json
import sys

import torch
from accelerate import Accelerator
from transformers import BertConfig

from sslnlp.config import ModelConfig
from sslnlp.objectives.simcse import SimCSE, SimCSEConfig


def main() -> None:
    accelerator = Accelerator()
    torch.manual_seed(0)  # the same weights and batch on every rank
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    objective = SimCSE(SimCSEConfig(dropout=0.0), ModelConfig())  # no dropout: the sums depend on the batch only
    model = objective.build_model(config)
    input_ids = torch.randint(5, 64, (8, 12))
    attention_mask = torch.ones_like(input_ids)
    prepared = accelerator.prepare(model)
    prepared.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    local = objective.loss(prepared, {"input_ids": input_ids[rows], "attention_mask": attention_mask[rows]}).sums["contrastive"]
    local.backward()
    gradient = sum(float(p.grad.abs().sum()) for p in prepared.parameters() if p.grad is not None)
    gathered_total = float(accelerator.reduce(local.detach(), "sum"))
    objective.config.gather_across_ranks = False
    without = float(accelerator.reduce(objective.loss(prepared, {"input_ids": input_ids[rows],
                                                                   "attention_mask": attention_mask[rows]}).sums["contrastive"].detach(), "sum"))
    reference = float(objective.loss(model, {"input_ids": input_ids, "attention_mask": attention_mask}).sums["contrastive"])

    # Adjacent pairs: 8 pairs (first segments input_ids, second segments seconds), 4 per rank; pairs 0 (rank 0) and
    # 4 (rank 1) come from one document, so each is no negative of the other although they sit on different ranks.
    paired = SimCSE(SimCSEConfig(dropout=0.0, positives="adjacent"), ModelConfig())
    seconds = torch.randint(5, 64, (8, 12))
    documents = torch.tensor([0, 1, 2, 3, 0, 5, 6, 7])

    def pairs(chosen):
        return {"input_ids": torch.cat([input_ids[chosen], seconds[chosen]]),
                "attention_mask": torch.cat([attention_mask[chosen], attention_mask[chosen]]), "document": documents[chosen]}

    model.paired = True  # the module inside the DDP wrapper: batches now hold both views
    paired_local = float(accelerator.reduce(paired.loss(prepared, pairs(rows)).sums["contrastive"].detach(), "sum"))
    paired.config.gather_across_ranks = False  # the whole global batch is local here
    paired_reference = float(paired.loss(model, pairs(slice(0, 8))).sums["contrastive"])
    if accelerator.is_main_process:
        with open(sys.argv[1], "w") as handle:
            json.dump({"world": world, "gathered": gathered_total, "local_only": without, "one_process": reference,
                       "gradient": gradient, "paired_gathered": paired_local, "paired_one_process": paired_reference},
                      handle)


if __name__ == "__main__":
    main()
