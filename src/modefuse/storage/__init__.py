"""Bytes on disk and tensors in memory: atomic writes, state-dict checks, checkpoints read a tensor at a time."""
