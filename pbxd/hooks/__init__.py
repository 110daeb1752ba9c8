"""Outbound webhooks: one HTTP client (timeouts, retries, durable spool) and its users."""
