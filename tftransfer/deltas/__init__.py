"""Δθ = θ_target − θ_source as an artifact: `save_delta` writes what a
fine-tuned recipe changed of its backbone (LoRA factors, changed biases and
norms, or a compressed dense difference), its head and a digest of the
source weights; `load_delta` rebuilds the model against a matching source."""

from tftransfer.deltas.artifact import load_delta, save_delta, weights_digest

__all__ = ["load_delta", "save_delta", "weights_digest"]
