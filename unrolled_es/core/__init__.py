"""The contract and the engine: what a user hands over (`UnrolledSystem`), what every estimator returns
(`GradientEstimator`), and the stages every ES estimator runs (particles → window → gradient), with the keyed
random numbers they draw from.

Data flows one way: system → particles (who resets, who redraws) → window (draw, perturb, unroll) → gradient
(loss differences → coefficients → one weighted sum of the draws).
"""
