"""Where a transformer keeps its blocks and feed-forward layers, found from the model itself rather
than from per-architecture tables: the block list is the one nn.ModuleList as long as
`config.num_hidden_layers`; in each block the feed-forward "up" Linears are those with
`config.intermediate_size` outputs and the "down" Linear the one with that many inputs. That holds
for BERT-style encoders (intermediate.dense / output.dense) and Llama-style decoders (gate_proj,
up_proj / down_proj) alike, and the pruned model stays loadable because every block keeps the same
sizes, which is all a transformers config can describe.

transformers 5 dropped `prune_heads` / `config.pruned_heads`, and BERT derives its head size from
hidden_size / num_attention_heads, so removing BERT attention heads cannot be written as a folder
plain transformers loads; structured pruning here removes feed-forward neurons and whole blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunelab.errors import TunelabError


@dataclass
class Block:
    index: int
    module: nn.Module
    up: list[nn.Linear]  # intermediate_size outputs (rows)
    down: nn.Linear  # intermediate_size inputs (columns)


def block_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, the ModuleList of transformer blocks)."""
    n = getattr(model.config, "num_hidden_layers", None)
    if getattr(model.config, "is_encoder_decoder", False) or n is None:
        raise TunelabError(f"structured pruning supports encoder-only and decoder-only transformers; "
                           f"'{type(model).__name__}' is not one (use unstructured pruning: --method magnitude)")
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) != 1:
        raise TunelabError(f"could not find the {n} transformer blocks of '{type(model).__name__}' "
                           f"(found {len(found)} lists of that length); use --method magnitude")
    name, blocks = found[0]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return parent, name.rpartition(".")[2], blocks


def blocks(model: nn.Module) -> list[Block]:
    size = getattr(model.config, "intermediate_size", None)
    out = []
    for i, block in enumerate(block_list(model)[2]):
        linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
        up = [m for m in linears if m.out_features == size and m.in_features != size]
        down = [m for m in linears if m.in_features == size and m.out_features != size]
        if size is None or not up or len(down) != 1:
            raise TunelabError(f"could not find the feed-forward layers of block {i} of '{type(model).__name__}' "
                               "(config.intermediate_size); prune whole layers (--layers) or use --method magnitude")
        out.append(Block(i, block, up, down[0]))
    return out


def linear_weights(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear inside the transformer blocks: what unstructured pruning prunes (embeddings, the
    task head and lm_head are left dense: they are small, or shared with the embeddings)."""
    _, attr, mods = block_list(model)
    prefix = next(name for name, m in model.named_modules() if m is mods)
    return [(f"{prefix}.{name}", m) for name, m in mods.named_modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def keep_neurons(block: Block, keep: torch.Tensor) -> None:
    """Keep the feed-forward neurons `keep` (sorted indices) of one block, in place."""
    for lin in block.up:
        lin.weight = nn.Parameter(lin.weight[keep].clone())
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias[keep].clone())
        lin.out_features = len(keep)
    d = block.down
    d.weight = nn.Parameter(d.weight[:, keep].clone())
    d.in_features = len(keep)


def keep_blocks(model: nn.Module, keep: list[int]) -> None:
    """Keep the blocks `keep` (in order), renumbering their layer_idx (KV-cache slots) and trimming
    per-layer config lists, so the smaller model saves and reloads as an ordinary one."""
    parent, attr, mods = block_list(model)
    kept = nn.ModuleList([mods[i] for i in keep])
    for new, block in enumerate(kept):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new
    setattr(parent, attr, kept)
    config = model.config
    for key in ("layer_types",):
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == len(mods):
            setattr(config, key, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)
