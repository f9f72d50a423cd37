"""Code shared by the GenAI services."""
