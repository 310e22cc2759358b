"""Training: ``pretrain(config)`` (``loop``), the distributed engines' set-up (``engines``), checkpoints and exact
resume (``checkpoint``), weight averaging (``averaging``), heartbeats between processes (``peers``) and what a run
records of its inputs (``provenance``). The runtime it shares with fine-tuning (accelerator, precision, schedule) is the base module
``sslnlp.runtime``.

The only room that knows all the others: may import every subpackage (data, models, objectives, evaluation,
publishing) and the base modules, never the command line.
"""
