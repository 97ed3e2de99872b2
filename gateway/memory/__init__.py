"""Long-term memory: embedding, vector stores, recall into prompts, the outbox."""
