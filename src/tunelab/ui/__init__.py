"""`tunelab ui`: the web UI (Gradio mounted in FastAPI). Pages: ui/new_run.py, live.py, runs_page.py,
playground.py, export_page.py; the server and its access token: ui/server.py; jobs: ui/jobs.py."""
