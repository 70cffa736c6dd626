"""tunelab: adapt pretrained language models to real tasks, measure before vs after, ship the result.

Data flow: config -> data -> model + method -> train -> evaluate -> artifacts -> export/serve. The
Python API is `tunelab.session` (Session, Predictor). Importing tunelab changes nothing in the process:
no environment variables, no warning filters (the CLI and a Session set what they need when they start).
"""

__version__ = "0.1.0"
