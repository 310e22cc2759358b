"""Evaluation of a checkpoint on labelled tasks: tasks and their sources (``tasks``), features (``features``), the
linear probe with embedding-space scores (``probing``, ``geometry``), fine-tuning (``finetuning``), metrics
(``metrics``), the results files (``results``) and what both commands load (``loading``).

May import: the base modules, ``sslnlp.data`` and ``sslnlp.models``. Never training, objectives, publishing or
the command line.
"""
