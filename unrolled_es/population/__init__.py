"""Population methods that move θ themselves rather than hand a gradient to optax: the Deep GA, SNES, integer ES,
and lottery-ticket pruning built on them."""
