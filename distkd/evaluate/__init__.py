"""Evaluation: mergeable classification metrics, model cost and the comparison report."""
