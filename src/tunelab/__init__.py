"""tunelab: adapt pretrained language models to real tasks, measure before vs after, ship the result.

Data flow: config -> data -> model + method -> train -> evaluate -> artifacts -> export/serve.
"""

import os

# torch's CPU GEMMs (oneDNN, through ideep) keep two caches of compiled kernels, one entry per matrix
# shape: oneDNN's own (ONEDNN_PRIMITIVE_CACHE_CAPACITY, 1024 by default) and ideep's (LRU_CACHE_CAPACITY,
# also 1024), each entry holding compiled code and scratch buffers. Length-grouped batches bring new
# shapes at almost every step, so memory in use grew ~3 MB per step and peak RSS with the data
# (sentiment, 2,000 tweets: 1.49-1.55 GB with only oneDNN's at 16, 1.25-1.28 GB with both, and faster). Both are
# read when the first GEMM runs, so the default is set here; packed training, whose few shapes repeat,
# widens them again (models/cpu_kernels.py widen_kernel_caches). Values the user exported always win.
KERNEL_CACHE_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
USER_KERNEL_CACHE = {k: os.environ[k] for k in KERNEL_CACHE_VARS if k in os.environ}
for _var in KERNEL_CACHE_VARS:
    os.environ.setdefault(_var, "16")

__version__ = "0.1.0"
