"""Every user error is one line starting with `error:`, a non-zero exit, and no traceback. The CLI's
printing and exit code are checked on a few commands in a subprocess; the errors themselves in-process
(the same TunelabError the CLI prints)."""

import pytest

from conftest import TINY, one_line_error, run_cli, train


def _one_line_error(proc, pattern):
    import re

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [x for x in proc.stdout.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, proc.stdout
    assert re.search(pattern, errors[0]), errors[0]


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["train.learning_rate=1e-3"], r"unknown key 'train.learning_rate'; did you mean 'train.lr'\?"),
        (["train.epochs=many"], r"train.epochs: input should be a valid number.*'many'"),
        (["data.path=/nope/data.csv"], r"data file '/nope/data.csv' does not exist"),
        (["model.name=/nope/model"], r"model path '/nope/model' does not exist"),
        (["method.target_modules=[q_proj]"], r"target module\(s\) q_proj not found"),
    ],
)
def test_train_errors(args, pattern, tmp_path):
    one_line_error(lambda: train(*TINY, *args, f"output.dir={tmp_path / 'r'}"), pattern)


def test_the_cli_prints_one_error_line_and_exits_2():
    _one_line_error(run_cli("train", *TINY, "train.learning_rate=1e-3"), r"unknown key 'train.learning_rate'")


def test_missing_column_and_empty_data(tmp_path, tweets_csv):
    one_line_error(lambda: train(*TINY, f"data.path={tweets_csv}", f"output.dir={tmp_path / 'a'}"),
                   r"has no column 'text'.*set data.text_column")
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n")
    one_line_error(lambda: train(*TINY, f"data.path={empty}", f"output.dir={tmp_path / 'b'}"), r"no usable rows")


def test_encoding_and_unseen_test_labels(tmp_path):
    bad = tmp_path / "latin.csv"
    bad.write_bytes(("text,label\n" + "".join(f"caf\xe9 {i},{'ab'[i % 2]}\n" for i in range(40))).encode("latin-1"))
    one_line_error(lambda: train(*TINY, f"data.path={bad}", f"output.dir={tmp_path / 'a'}"),
                   r"not valid utf-8.*data.encoding=latin-1")
    tr, te = tmp_path / "tr.csv", tmp_path / "te.csv"
    tr.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(40)))
    te.write_text("text,label\nx,a\ny,zebra\n")
    one_line_error(lambda: train(*TINY, f"data.train_path={tr}", f"data.test_path={te}", f"output.dir={tmp_path / 'b'}"),
                   r"labels in test not in train: zebra")


def test_eval_of_a_folder_that_is_not_a_run(tmp_path):
    _one_line_error(run_cli("eval", str(tmp_path)), r"is not a tunelab run folder")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error where no GPU is visible")
def test_cuda_asked_for_without_a_gpu_fails_before_a_run_folder(tmp_path):
    out = tmp_path / "run"
    _one_line_error(run_cli("train", *TINY, "train.device=cuda", f"output.dir={out}"),
                    r"train.device=cuda but torch sees no CUDA GPU.*set train.device=cpu or auto")
    assert not out.exists()


def test_device_resolution():
    import torch

    from tunelab.runtime import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
