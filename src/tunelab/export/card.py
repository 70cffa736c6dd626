"""The export's README.md model card and its tunelab_export.json record."""

from __future__ import annotations

import yaml

from tunelab.config.schema import RunConfig


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def metrics_table(test: dict) -> str:
    """Markdown table: one row per scalar metric, one column per evaluation (before / after / ...)."""
    cols = list(test)
    names: list[str] = []
    for c in cols:
        names += [k for k, v in test[c].items() if isinstance(v, (int, float)) and k not in names]
    if not names:
        return "_no test metrics recorded_\n"
    lines = ["| metric | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_fmt(test[c].get(n, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def model_card(cfg: RunConfig, summary: dict, record: dict) -> str:
    task, auto = cfg.task.type, record["auto_class"]
    labels = summary.get("labels") or []
    quant = record["quantization"]
    load = (f"from transformers import {auto}, AutoTokenizer\n"
            f'model = {auto}.from_pretrained("PATH")\ntokenizer = AutoTokenizer.from_pretrained("PATH")\n')
    if quant == "int8-dynamic":
        load += ("# int8-dynamic is applied at load time (the weights on disk are ordinary safetensors):\n"
                 "import torch\nmodel = torch.ao.quantization.quantize_dynamic(model.float(), {torch.nn.Linear}, dtype=torch.qint8)\n")
    parts = [
        f"# {cfg.name}: {cfg.model.name} + {cfg.method.name} ({task})\n",
        (summary.get("description") or cfg.description or "") + "\n",
        "Exported by tunelab from run `" + record["source_run"] + "`: the adapter merged into the base "
        f"weights, weights in {record['dtype']}, quantization {quant}."
        + (" An ONNX graph (`model.onnx`) is included." if record.get("onnx") else "") + "\n",
        "## Model\n",
        f"- base model: `{cfg.model.name}`\n- method: `{cfg.method.name}`\n- task: {task}"
        + (f"\n- labels: {', '.join(labels)}" if labels else "")
        + f"\n- dataset: `{summary.get('dataset', cfg.data.name or cfg.data.path)}`\n",
        "## Test metrics (from the run's summary.json)\n",
        metrics_table(summary.get("test", {})),
        "Measured on the run's test split with the unmerged adapter in the run's precision; the merged "
        f"export reproduces its outputs (max abs logit difference {record['check']['max_abs_diff']:.2e} on "
        f"{record['check']['inputs']} probe inputs"
        + (", after the cast/quantization above" if record["dtype"] != "fp32" or quant != "none" else "") + ").\n",
        "## Loading\n",
        "```python\n" + load + "```\n",
        "## Training config\n",
        "```yaml\n" + yaml.safe_dump({k: cfg.model_dump(mode="json")[k] for k in ("model", "data", "task", "method", "train")},
                                     sort_keys=False) + "```\n",
    ]
    return "\n".join(parts)
