"""Shared data-free robust distillation machinery: the method contract and its pieces."""
