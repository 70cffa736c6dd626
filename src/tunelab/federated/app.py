"""The Flower apps: `client_app` and `server_app` (the components a Flower App bundle names, see
`app_folder`), and the ClientApp's message handling. The work is in client.py and server.py."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tunelab.federated.server import make_server_app

client_app = ClientApp()
server_app = make_server_app()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    from tunelab.federated.client import train_round

    config = dict(msg.content["config"])
    recipe = json.loads(config["tunelab-config"])
    state = {k: v.to(torch.float32) if v.is_floating_point() else v
             for k, v in msg.content["arrays"].to_torch_state_dict().items()}
    new, metrics = train_round(recipe, dict(context.node_config), config, state)
    name = metrics.pop("name")
    # One ArrayRecord and one MetricRecord (with the same keys from every client), as Flower's strategies
    # require; the client's name rides in a ConfigRecord of its own.
    return Message(content=RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord(metrics),
                                       "client": ConfigRecord({"name": name})}), reply_to=msg)


APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tunelab-federated"
version = "1.0.0"
description = "tunelab federated fine-tuning (the code is the installed tunelab package)"
dependencies = []

[tool.flwr.app]
publisher = "tunelab"

[tool.flwr.app.components]
serverapp = "tunelab.federated.app:server_app"
clientapp = "tunelab.federated.app:client_app"

[tool.flwr.app.config]
run-dir = ""
"""


def app_folder(path: Path) -> Path:
    """A Flower App folder for `flwr run`: its pyproject names tunelab's installed components, so the
    bundle carries no code (every SuperLink and SuperNode machine has tunelab installed)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(APP_TOML, encoding="utf-8")
    return path
