"""The benchmarks (bench/README.md): each is a module run from the repository root,
``python -m bench.overhead`` and so on, so they import the gateway, ``harness`` and
each other as packages.
"""
