"""Pricing: the worker threads and the model they run."""
