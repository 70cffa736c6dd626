"""LoRA: W' = W + (alpha / r) * B @ A with A (r x k) and B (d x r) trained, W frozen (through peft)."""

from tunelab.methods.lora.method import LoraConfig, LoraMethod

__all__ = ["LoraConfig", "LoraMethod"]
