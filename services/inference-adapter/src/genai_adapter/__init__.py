"""gRPC InferenceService in front of an OpenAI-compatible model server (vLLM, llama.cpp)."""
