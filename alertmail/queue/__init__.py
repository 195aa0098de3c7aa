"""The queue: the durable spool, the badmail folder and delivery-status reports."""
