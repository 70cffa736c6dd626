"""tunelab: adapt pretrained language models to real tasks, measure before vs after, ship the result.

Data flow: config -> data -> model + method -> train -> evaluate -> artifacts -> export/serve.
"""

import os

# oneDNN (torch's CPU GEMM library) keeps up to 1024 compiled kernels by default, with their scratch
# buffers, one per distinct matrix shape. Length-grouped batches produce many shapes, so peak memory
# grew with the data (~+300 MB at 2,000 tweets); 16 kept it near flat at no measured speed cost
# (bench/README.md). Read when oneDNN first runs, so it is set at import; the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

__version__ = "0.1.0"
