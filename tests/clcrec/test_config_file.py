"""`train --config FILE.toml`: keys are TrainConfig fields, typed; options typed on the command line
override the file; every run directory gets a resolved config.toml that --config takes back and
that trains the same config again; a bad file is one line naming the key, exit 1, nothing written."""

from __future__ import annotations

import json

import pytest

from cache.manifest import NegativeConfig
from clcrec.config import TrainConfig
from common.errors import UserError
from common.tomlconfig import read_toml_fields
from tests.support import NUM_NEG, run_batch




def test_fields_are_typed_by_the_dataclass(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('l_r = 1\nks = [5, 10]\nmodalities = ["v"]\nhas_v = false\ndataset = "d"\n')
    got = read_toml_fields(f, TrainConfig)
    assert got == {"l_r": 1.0, "ks": (5, 10), "modalities": ("v",), "has_v": False, "dataset": "d"}
    assert isinstance(got["l_r"], float)
    for text, says in [("dim_e = 32", "unknown key 'dim_e'; did you mean 'dim_E'?"),
                       ("epochs = 2.5", "epochs must be an integer, got 2.5"),
                       ("epochs = true", "epochs must be an integer, got True"),
                       ('l_r = "0.1"', "l_r must be a number, got '0.1'"),
                       ("ks = [10, 'x']", "ks must be a list of integers"),
                       ("has_v = 1", "has_v must be true or false"),
                       ("l_r = nan", "l_r must be a number, got nan"),
                       ("l_r = ", "is not valid TOML")]:
        f.write_text(text + "\n")
        with pytest.raises(UserError) as e:
            read_toml_fields(f, TrainConfig)
        assert says in str(e.value) and str(f) in str(e.value), str(e.value)


def test_a_config_survives_its_own_toml(tmp_path):
    cfg = TrainConfig(dataset='d "quoted" \\ x', run_dir="r", l_r=1e-05, ks=(5, 10), modalities=("a", "b"),
                      has_t=False, eval_ema=0.0)
    f = tmp_path / "c.toml"
    f.write_text(cfg.to_toml())
    assert TrainConfig(**read_toml_fields(f, TrainConfig)) == cfg.replace(run_dir="")


def test_train_and_build_negatives_take_config_files(tiny_dataset, tiny_cache, tmp_path):
    base = tmp_path / "base.toml"
    base.write_text(f'dataset = "{tiny_dataset}"\ncache = "{tiny_cache}"\nnum_neg = {NUM_NEG}\n'
                    "epochs = 3\nl_r = 0.02\nbatch_size = 512\nselect_k = 20\nselect_window = 1\neval_ema = 0.0\n")
    bad_key, bad_type = tmp_path / "bad-key.toml", tmp_path / "bad-type.toml"
    bad_key.write_text(base.read_text() + "lr = 0.1\n")
    bad_type.write_text(base.read_text().replace("epochs = 3", 'epochs = "3"'))
    neg_bad = tmp_path / "neg.toml"
    neg_bad.write_text("num_negs = 4\n")
    first, again, nothing = tmp_path / "first", tmp_path / "again", tmp_path / "nothing"
    res = run_batch([
        dict(argv=["train", "--config", base, "--epochs", 1, "--run-dir", first]),  # the flag beats the file
        dict(argv=["train", "--config", first / "config.toml", "--run-dir", again]),
        dict(argv=["train", "--config", bad_key, "--run-dir", nothing], watch=[nothing, tiny_cache]),
        dict(argv=["train", "--config", bad_type, "--run-dir", nothing], watch=[nothing, tiny_cache]),
        dict(argv=["train", "--config", tmp_path / "absent.toml", "--run-dir", nothing], watch=[nothing]),
        dict(argv=["build-negatives", tiny_dataset, tmp_path / "c", "--config", neg_bad], watch=[tmp_path / "c"]),
    ], tmp_path)
    assert res[0]["rc"] == 0 and res[1]["rc"] == 0, res[:2]
    one = json.loads((first / "config.json").read_text())["config"]
    two = json.loads((again / "config.json").read_text())["config"]
    assert one["epochs"] == 1 and one["l_r"] == 0.02 and one["batch_size"] == 512
    assert {**one, "run_dir": ""} == {**two, "run_dir": ""}
    for r, says in zip(res[2:], ["unknown key 'lr'; did you mean 'l_r'?", "epochs must be an integer, got '3'",
                                 "absent.toml does not exist", "unknown key 'num_negs'; did you mean 'num_neg'?"]):
        assert r["rc"] == 1 and says in r["out"] and "Traceback" not in r["out"], r
        assert len(r["out"].strip().splitlines()) == 1 and r["changed"] == [], r
    assert not (tmp_path / "c").exists()


def test_negative_config_fields_read_the_same_way(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text('num_neg = 32\nexclusion = "train"\n')
    assert NegativeConfig(**read_toml_fields(f, NegativeConfig)) == NegativeConfig(num_neg=32)
