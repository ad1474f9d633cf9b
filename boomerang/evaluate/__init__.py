"""Evaluation: perplexity, lm-eval tasks, scoring many models with shared prefixes, and the sweep plot."""
