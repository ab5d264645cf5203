"""The ClientApp: a zoo model trained on this node's shard, settings from [tool.flwr.app.config]."""
from modefuse.federated.flower import client_app

app = client_app()
