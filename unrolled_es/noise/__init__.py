"""Perturbation noise and its transforms: Gaussian (optionally with a scale per coordinate), low-rank (EGGROLL),
orthogonal directions, Guided ES's subspace, masks of untrained coordinates, and low-precision θ.

Every noise declares what it needs of the estimator that uses it (`Noise.needs`; `Noise.check(Use(...))` raises a
ValueError naming both when it is not given), and a transform checks what it wraps when it is built and refuses what
it cannot keep unbiased, naming both parts. Nothing outside this package looks at a noise's concrete draw types.
"""
