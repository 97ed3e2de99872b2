"""Starting, waiting for and stopping memgate's processes, for the tests and the benchmarks.

Imported from the repository root (pytest's pythonpath, ``python -m bench.NAME``); not
part of the installed package. ``process`` is the one process wrapper; ``fake_llm``
starts the stand-in LLM with it.
"""
