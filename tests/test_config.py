import pytest
import yaml

from nfaudio.config import Config, ConfigError, apply_overrides, dump_config, from_dict, load_config


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = Config()
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left


def test_recipe_values_and_types(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 1, "name": "adamw"}, "augment": {"noise_snr": [3, 9]},
                                    "model": {"pretrained": "weights/w.pth"}}))
    cfg = load_config(path)
    assert cfg.optim.lr == 1.0
    assert isinstance(cfg.optim.lr, float)
    assert cfg.augment.noise_snr == (3.0, 9.0)
    assert cfg.model.pretrained == "weights/w.pth"
    assert cfg.train.epochs == Config().train.epochs


def test_unknown_key_names_key_and_closest_match(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'; did you mean 'lr'\?.*r.yaml"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean 'train'"):
        from_dict({"trian": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="'train.epochs' must be an integer"):
        from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="'train.ema' must be true or false"):
        from_dict({"train": {"ema": 1}})


def test_dotted_overrides():
    assert load_config(None, ["optim.lr=3e-3"]).optim.lr == 0.003  # YAML 1.1 reads 3e-3 as a string
    cfg = load_config(None, ["optim.lr=0.01", "model.pretrained=true", "cv.folds=[0, 2]", "model.stem_stride=null"])
    assert cfg.optim.lr == 0.01
    assert cfg.model.pretrained is True
    assert cfg.cv.folds == [0, 2]
    assert cfg.model.stem_stride is None
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="unknown key 'optim.nope'"):
        load_config(None, ["optim.nope=1"])


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_relative_data_paths_resolve_against_recipe(tmp_path):
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text("data:\n  root: ../data\n")
    assert load_config(path).data.root == str((tmp_path / "data").resolve())
