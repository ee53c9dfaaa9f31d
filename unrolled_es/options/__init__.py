"""Options and wrappers around an estimator: per-episode horizons, fitness transforms, gradient clipping, the
ES + autodiff hybrid, and several inner problems in one outer step."""
