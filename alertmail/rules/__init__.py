"""Rules: the pure state machine from samples to alert events (windows, flapping)."""
