"""A Telegram bot that is a client of the gateway like any other, acting for each linked user."""
