"""Names of the modules a task adds fresh on top of a pretrained body (classification heads, a
masked-LM checkpoint's pooler, a language-model head): they train in full and are never quantized."""

FRESH_MODULES = ("classifier", "score", "pooler", "lm_head")
