"""Evaluation of a checkpoint on labelled tasks: tasks and their sources, a label per text or a tag per word
(``tasks``), features (``features``), the linear probe with embedding-space scores (``probing``, ``geometry``),
fine-tuning (``finetuning``), learning curves with the TF-IDF baseline (``curves``), metrics (``metrics``), the
results files (``results``) and what both commands load (``loading``).

May import: the base modules, ``sslnlp.data`` and ``sslnlp.models``. Never training, objectives, publishing or
the command line.
"""
