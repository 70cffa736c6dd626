"""tunelab: adapt pretrained language models to real tasks, measure before vs after, ship the result.

Data flow: config -> data -> model + method -> train -> evaluate -> artifacts -> export/serve.
"""

__version__ = "0.1.0"
