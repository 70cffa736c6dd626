"""`tunelab params`: trainable vs total parameters of a model + method, by kind of parameter."""

from __future__ import annotations

from collections import defaultdict

from rich.table import Table

from tunelab.config.schema import RunConfig
from tunelab.models.state import count_parameters
from tunelab.tasks import make_task


def lora_matrix_params(d: int, k: int, r: int) -> int:
    """LoRA on a d x k weight trains B (d x r) and A (r x k): r * (d + k) parameters."""
    return r * (d + k)


def parameter_table(cfg: RunConfig) -> Table:
    """Built as training would build it (the task's head, then the method), without any data."""
    from tunelab.methods import get_method

    task, method = make_task(cfg), get_method(cfg.method.name)(cfg.method)
    task.labels = getattr(cfg.task, "labels", None) or ["label_0", "label_1", "label_2"]
    _, model = task.load_model(**method.model_load_kwargs("cpu"))
    heads = task.head_modules(model)
    model = method.apply(model, head_modules=heads, peft_task_type=task.peft_task_type)
    trainable, total = count_parameters(model)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, p in model.named_parameters():
        kind = ("lora" if "lora_" in name else "task head" if any(f".{h}." in f".{name}" for h in heads)
                else "frozen backbone" if not p.requires_grad else "backbone (trained)")
        groups[kind][0] += p.numel()
        groups[kind][1] += p.numel() if p.requires_grad else 0
    table = Table(title=f"{cfg.model.name} + {cfg.method.name}", header_style="bold")
    for col in ("parameters", "count", "trainable"):
        table.add_column(col, justify="right" if col != "parameters" else "left")
    for kind, (n, t) in groups.items():
        table.add_row(kind, f"{n:,}", f"{t:,}")
    table.add_row("[bold]total", f"[bold]{total:,}", f"[bold]{trainable:,} ({100 * trainable / total:.3f}%)")
    return table
