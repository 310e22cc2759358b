"""Models: ``transformers`` architectures built from a config or a checkpoint, the sparse masked-LM head, pooling,
FLOPs per token and the hardware's peak, and the export of a trained model to a Hugging Face directory.

May import: the base modules (``sslnlp.config``, ``sslnlp.console``, ``sslnlp.files``) and ``sslnlp.data``.
"""
