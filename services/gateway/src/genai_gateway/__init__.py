"""Public HTTP API and web page of the GenAI service."""
