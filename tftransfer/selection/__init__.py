"""Choosing a backbone before training: transferability scores and rankings."""

from tftransfer.selection import scores

__all__ = ["scores"]
