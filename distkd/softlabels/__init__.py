"""Teacher soft labels: the actor pool that computes them and the cache that keeps them."""
