"""Delivery: queued messages through the route's transports, retries, DSN and badmail; the outbox that owns them."""
