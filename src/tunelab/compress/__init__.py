"""Smaller and faster after training: pruning (prune.py, structure.py), knowledge distillation
(distill.py) and one table that measures every way of making a finished run smaller (table.py,
measure.py) against the fp32 teacher.

Every result is a plain Hugging Face model folder (config.json + safetensors + tokenizer) that
`transformers` loads without tunelab and `tunelab serve` serves; `tunelab_export.json` records what
was done to it, as for `tunelab export`."""
