"""Hugging Face model folders (`config.json` + `*.safetensors`) as first-class inputs: aligned streamed,
fused and interpolated (`folders`), and texts as next-token data (`textdata`)."""
from .folders import (FolderAlignment, align_folders, describe, example_input, fuse_folders,  # noqa: F401
                      interpolate_folders, is_folder, load_folder, skeleton)

__all__ = ["align_folders", "fuse_folders", "interpolate_folders", "load_folder", "FolderAlignment", "is_folder",
           "skeleton", "example_input", "describe"]
