"""Method plugins: one file per method; each registers itself with ``register_method``."""
