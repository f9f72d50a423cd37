"""The auth service: users, argon2id passwords, JWT sessions, and the admin CLI."""
