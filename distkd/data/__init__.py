"""Dataset sources and input transforms."""
