import pytest

from tunelab.config import load_config, parse_overrides
from tunelab.config.load import validate_config
from tunelab.errors import TunelabError
from tunelab.recipes import find_recipe, recipe_names


def test_default_recipe_loads_with_packaged_defaults():
    cfg = load_config()
    assert cfg.name == "sentiment-lora"
    assert cfg.model.name == "minilm"
    assert cfg.method.name == "lora" and cfg.method.r == 8
    assert cfg.data.name == "tweets-sentiment"


def test_every_packaged_recipe_validates():
    assert "sentiment-lora" in recipe_names()
    for name in recipe_names():
        assert load_config(name).name == name


def test_overrides_are_typed_and_nested():
    o = parse_overrides(["method.r=16", "train.lr=3e-4", "method.target_modules=[query,key]", "train.group_by_length=false"])
    assert o == {"method": {"r": 16, "target_modules": ["query", "key"]}, "train": {"lr": 3e-4, "group_by_length": False}}
    cfg = load_config("sentiment-lora", ["method.r=16", "train.lr=3e-4"])
    assert cfg.method.r == 16 and cfg.train.lr == pytest.approx(3e-4)


def test_unknown_key_suggests_the_closest_valid_key():
    with pytest.raises(TunelabError, match=r"unknown key 'train.learning_rate'; did you mean 'train.lr'"):
        load_config(None, ["train.learning_rate=1e-3"])
    with pytest.raises(TunelabError, match=r"unknown key 'method.rank'; did you mean 'method.r'"):
        load_config(None, ["method.rank=4"])
    with pytest.raises(TunelabError, match=r"unknown key 'trian'"):
        load_config(None, ["trian.lr=1"])


def test_bad_value_type_names_key_and_value():
    with pytest.raises(TunelabError, match=r"train.batch_size: .*integer.*'lots'"):
        load_config(None, ["train.batch_size=lots"])
    with pytest.raises(TunelabError, match=r"train.precision: input should be 'auto'"):
        load_config(None, ["train.precision=fp64"])


def test_unknown_method_suggests():
    with pytest.raises(TunelabError, match=r"method.name: unknown value 'lorra'; did you mean 'lora'"):
        load_config(None, ["method.name=lorra"])


def test_user_file_replaces_packaged_dataset():
    cfg = validate_config({"data": {"path": "x.csv"}})
    assert cfg.data.name is None
    with pytest.raises(TunelabError, match="either data.path"):
        validate_config({"data": {"path": "x.csv", "train_path": "y.csv"}})


def test_missing_recipe_file():
    with pytest.raises(TunelabError, match="does not exist"):
        find_recipe("nope/missing.yaml")
    with pytest.raises(TunelabError, match="did you mean 'sentiment-lora'"):
        find_recipe("sentiment-lor")


def test_bad_override_syntax():
    with pytest.raises(TunelabError, match="not key=value"):
        parse_overrides(["train.lr"])
