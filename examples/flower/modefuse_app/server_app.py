"""The ServerApp: modefuse's FedFusion strategy, settings from [tool.flwr.app.config]."""
from modefuse.federated.flower import server_app

app = server_app()
