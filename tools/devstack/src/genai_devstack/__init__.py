"""Runs the whole GenAI stack on one machine without Docker: the embedded default and the test harness."""
