"""Layers that apply factored noise without forming a matrix per particle: plain JAX, haiku, flax linen, flax NNX,
equinox, and integer (int8) layers. Each model library's module is imported only when used."""
