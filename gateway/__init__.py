"""memgate: a memory-augmented, OpenAI-compatible chat gateway.

Importing this package has no side effects and never pulls in torch,
transformers, sentence_transformers or vllm: inference lives in its own
process (the embedder, the LLM server) behind HTTP.
"""

__version__ = "0.1.0"
