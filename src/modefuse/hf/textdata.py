"""Language models on a text: next-token batches from a file, and a causal LM seen as a per-token classifier.

`evaluate` and `interpolate` compare a model's outputs with targets position by position (loss: mean
cross-entropy per token; accuracy: share of tokens predicted right), so a causal LM is wrapped to return
its logits with the vocabulary on axis 1, the layout `cross_entropy` takes for sequences.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import ModefuseError

TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "spiece", "special_tokens_map")


def token_blocks(folder: str | os.PathLike, text_file: str | os.PathLike, block: int = 128,
                 limit: int | None = None) -> TensorDataset:
    """`text_file` tokenized with the folder's tokenizer, cut into blocks of `block` tokens: pairs
    (tokens, the tokens one step later). Blocks do not overlap; at most `limit` of them."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ModefuseError("language-model folders need transformers: pip install transformers") from None
    try:
        text = Path(text_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModefuseError(f"cannot read the text {text_file}: {getattr(e, 'strerror', None) or e}") from None
    how = f"save the tokenizer of the model there: AutoTokenizer.from_pretrained(NAME).save_pretrained('{folder}')"
    # without tokenizer files transformers may still build an empty tokenizer from the config: refuse it here
    if not any(p.name.startswith(TOKENIZER_FILES) or p.suffix in (".model", ".tiktoken")
               for p in Path(folder).iterdir()):
        raise ModefuseError(f"{folder} has no tokenizer files; {how}")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ModefuseError(f"{folder} has no tokenizer transformers can load ({str(e).splitlines()[0]}); "
                            f"{how}") from None
    ids = torch.tensor(tok(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    if text.strip() and len(ids) == 0:
        raise ModefuseError(f"the tokenizer in {folder} makes no tokens of {text_file}; {how}")
    n = len(ids) // (block + 1)
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise ModefuseError(f"{text_file} holds {len(ids)} tokens, fewer than one block of {block + 1}: give a "
                            f"longer text or a smaller block")
    blocks = ids[:n * (block + 1)].view(n, block + 1)
    return TensorDataset(blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous())


class NextToken(nn.Module):
    """A causal language model's logits as (batch, vocabulary, position): per-token classification."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=False)
        return (out.logits if hasattr(out, "logits") else out[0]).transpose(1, 2)


def check_causal_lm(model: nn.Module, where: str) -> None:
    """Refuse, naming the class, a model whose outputs are not next-token logits."""
    cfg = getattr(model, "config", None)
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is None or getattr(cfg, "is_encoder_decoder", False):
        raise ModefuseError(f"{where} holds a {type(model).__name__}, not a causal language model (a model with a "
                            f"language-model head that reads tokens left to right): interpolating folders measures "
                            f"next-token loss; evaluate other models with mf.interpolate and your own data and loss")


def max_block(model: nn.Module, block: int) -> int:
    """`block`, shortened to the longest sequence the model's positions allow."""
    cfg = getattr(model, "config", None)
    longest = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    return min(block, longest) if longest else block


__all__ = ["token_blocks", "NextToken", "check_causal_lm", "max_block"]
