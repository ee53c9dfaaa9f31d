"""Population methods that move θ themselves rather than hand a gradient to optax: the Deep GA, SNES and integer
ES share one interface (`base.PopulationMethod`: init(key, θ), step(key, θ, state) -> (θ', state, info)), and
lottery-ticket pruning builds on them."""
from unrolled_es.population.base import PopulationMethod, as_estimator, mean_episode_loss, utilities

__all__ = ["PopulationMethod", "as_estimator", "mean_episode_loss", "utilities"]
