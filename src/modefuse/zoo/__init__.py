"""The models and data this library trains and ships: architectures, datasets, batching, checkpoints and
the one training loop."""
