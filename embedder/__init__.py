"""The embedding service: sentence-transformers behind OpenAI's ``/v1/embeddings``.

This is the only memgate process that imports torch, and only inside the
model-loading code (``embedder.model``), never at import time.
"""

__version__ = "0.1.0"
