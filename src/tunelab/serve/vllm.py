"""`--backend vllm`: hand the serving to vLLM (`vllm serve BASE --enable-lora --lora-modules name=path`),
which batches generation on a GPU far better than we can. vLLM serves the OpenAI endpoints itself, on
the host and port asked for, with the same API key; tunelab's /v1/classify and /admin endpoints are
not available with this backend. vLLM is CUDA-only, so it is an optional dependency."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.serve.registry import check_name, parse_target
from tunelab.serve.schemas import ApiError


def vllm_command(targets: list[str], host: str, port: int, api_key: str | None) -> list[str]:
    """The `vllm serve` command line for runs that are LoRA adapters on one base model."""
    from tunelab.methods import get_method
    from tunelab.models.catalog import resolve_model
    from tunelab.runs.rundir import RunDir
    from tunelab.tasks import get_task

    bases, modules = set(), []
    for target in targets:
        name, path = parse_target(target)
        try:
            check_name(name)
        except ApiError as e:
            raise TunelabError(e.message) from None
        if not (Path(path) / "config.yaml").is_file():
            bases.add(str(path))  # a merged model folder: served as the base itself
            continue
        cfg = RunDir.open(path).config()
        method, task = get_method(cfg.method.name), get_task(cfg.task.type)
        if "vllm" not in method.serving_engines or task.kind != "generation":
            raise TunelabError(f"run '{path}' ({cfg.task.type}, {cfg.method.name}): vLLM serves LoRA adapters of "
                               "generative runs only; use --backend torch")
        bases.add(str(resolve_model(cfg.model.name)))
        modules.append(f"{name}={Path(path) / 'adapter'}")
    if len(bases) != 1:
        raise TunelabError(f"--backend vllm serves one base model; these targets use {len(bases)}: {', '.join(sorted(bases))}")
    cmd = ["vllm", "serve", bases.pop(), "--host", host, "--port", str(port)]
    if modules:
        cmd += ["--enable-lora", "--lora-modules", *modules]
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd


def serve_vllm(targets: list[str], host: str, port: int, api_key: str | None) -> None:
    if importlib.util.find_spec("vllm") is None or shutil.which("vllm") is None:
        raise TunelabError("--backend vllm needs vLLM, which is not installed (it needs an NVIDIA GPU): "
                           "`pip install vllm`, or use the default --backend torch")
    cmd = vllm_command(targets, host, port, api_key)
    try:
        raise SystemExit(subprocess.call(cmd))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
