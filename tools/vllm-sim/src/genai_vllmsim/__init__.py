"""An OpenAI-compatible server that behaves like vLLM's, for tests, fault injection and benchmarks."""
