"""The history service: conversations and their messages in PostgreSQL, served over gRPC."""
