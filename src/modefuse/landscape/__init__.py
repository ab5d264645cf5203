"""The loss landscape between models: linear paths and barriers, 2D planes, learned curves, attacks."""
