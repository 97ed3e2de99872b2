"""LLM upstreams: the client, health monitor, circuit breaker, retries and fallback."""
