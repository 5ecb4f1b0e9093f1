"""The outbox: one table for everything sent, and the sender that drains it."""
