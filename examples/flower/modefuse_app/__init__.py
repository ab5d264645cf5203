"""A Flower app running modefuse's fusing server (see pyproject.toml)."""
