"""LoCoMo retrieval research: loaders, metrics and offline experiments (see RESULTS.md)."""
