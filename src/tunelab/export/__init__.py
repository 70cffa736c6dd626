"""Shipping a finished run as a standalone model folder: merge, cast, quantize, ONNX, model card.

The folder is a plain Hugging Face model folder (config.json, model.safetensors, tokenizer, generation
config) that `transformers` loads without tunelab; `tunelab_export.json` records what was done."""
