"""Publishing a run: the model card (``card``), Hub transport during and after training (``hub``), and run reports
with charts (``report``).

May import: the base modules, ``sslnlp.data``, ``sslnlp.models``, ``sslnlp.objectives`` and ``sslnlp.evaluation``.
Never training or the command line.
"""
