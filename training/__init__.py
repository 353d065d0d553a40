"""Training side of the MLX CPT console: no Flask import anywhere in this package."""
