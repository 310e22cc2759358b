"""Data: text sources -> documents -> tokens -> blocks -> collated batches.

Owns corpus sources and mixtures (``corpus``), tokenizer training and loading (``tokenizer``), the block sources
that training reads (``blocks``: the interface and the shuffling, rank- and worker-sharded stream; ``packing``: packed
blocks streamed from a corpus; ``prepared``: blocks read from Arrow shards written by ``prepare``), document-aware
attention inputs (``documents``) and the masking collators (``masking``).

May import: ``sslnlp.config``, ``sslnlp.console``, ``sslnlp.files``. Never training, evaluation, objectives,
publishing or the command line: the objectives tell the data what layout they need, not the other way round.
"""
