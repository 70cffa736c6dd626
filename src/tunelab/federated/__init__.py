"""Federated fine-tuning on Flower (`tunelab federate`): clients train the ordinary Session on their
own data and send only the trainable state (adapter + task head); Flower's strategies (FedAvg,
FedProx, FedAdam, differential privacy) aggregate it; the global model is an ordinary run folder.

    partition.py   cut the data into one folder per client
    client.py      a client's round (local Session, FedProx term)
    strategy.py    Flower's strategy, wrapped to leave out failed or broken updates
    server.py      the global model: per-round evaluation, best/, resume point, final run folder
    app.py         the Flower ClientApp / ServerApp and the app folder `flwr run` submits
    run.py         simulation (Flower's engine, Ray) and deployment (SuperLink + SuperNodes)
    experiment.py  strategies + baselines (centralized, local-only) + report.py's table
"""
