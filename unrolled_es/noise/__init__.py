"""Perturbation noise and its transforms: Gaussian (optionally with a scale per coordinate), low-rank (EGGROLL),
orthogonal directions, Guided ES's subspace, masks of untrained coordinates, and low-precision θ.

Every noise declares what it supports (`Noise.supports`); a transform checks what it wraps when it is built and
refuses what it cannot keep unbiased, naming both parts.
"""
