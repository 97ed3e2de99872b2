"""The GPU runs of issue 18 (bench/gpu/run.sh)."""
