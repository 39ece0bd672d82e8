"""`--model_args` of `--model vtc` (vtc.lmms.options): every mistake is one ConfigError naming the key, before any
model loads. No lmms-eval needed."""

import json

import pytest
import torch

import vtc
from vtc.errors import ConfigError
from vtc.lmms.options import KEYS, ModelArgs, parse_arg_string
from vtc.training.trained import write_training_record

PVTC_R4 = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "pvtc4.json"
    PVTC_R4.save(path)
    return path


def test_a_full_argument_string_parses_into_checked_values(config_file, tmp_path):
    args = ModelArgs.parse(f"pretrained=reference:llava,config={config_file},batch_size=8,dtype=bfloat16,"
                           f"device=cpu,attn_implementation=eager,stats={tmp_path / 'stats.jsonl'}")
    assert args == ModelArgs(pretrained="reference:llava", config=PVTC_R4, batch_size=8, dtype=torch.bfloat16,
                             device="cpu", attn_implementation="eager", stats=tmp_path / "stats.jsonl")


def test_defaults_and_the_harness_keys(tmp_path):
    args = ModelArgs.parse({"pretrained": str(tmp_path), "batch_size": 1, "max_batch_size": None, "device": None})
    assert (args.pretrained, args.config, args.batch_size, args.dtype, args.stats) == (
        str(tmp_path), None, 1, torch.float32, None)
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_trained_run_folder_is_read_without_loading_a_model(tmp_path):
    PVTC_R4.save(tmp_path / "vtc_config.json")
    write_training_record(tmp_path, base_model="reference:llava", stage="compressor")
    assert ModelArgs.parse(f"trained={tmp_path}").trained == tmp_path


@pytest.mark.parametrize("text, field, message", [
    ("pretrained=reference:llava,ratio=4", "model_args", "ratio=4"),
    ("pretrained=reference:llava,batch_size", "model_args", "key=value items"),
    ("pretrained=reference:llava,pretrained=reference:llava", "pretrained", "given twice"),
    ("config=x.json", "pretrained", "Give pretrained=FOLDER"),
    ("pretrained=reference:llava,batch_size=0", "batch_size", "a positive integer"),
    ("pretrained=reference:llava,batch_size=auto", "batch_size", "batch_size=auto is not supported"),
    ("pretrained=reference:llava,dtype=float64", "dtype", "float32, bfloat16, float16"),
    ("pretrained=reference:llava,device=gpu7", "device", "a torch device"),
    ("pretrained=reference:nothing", "pretrained", "nothing"),
    ("pretrained=/no/such/folder", "pretrained", "There is no folder /no/such/folder"),
    ("pretrained=reference:llava,config=/no/such.json", "config", "There is no file /no/such.json"),
    ("trained=/no/such/run", "trained", "no such folder"),
])
def test_every_mistake_is_one_config_error_naming_the_key(text, field, message):
    with pytest.raises(ConfigError) as caught:
        ModelArgs.parse(text)
    assert caught.value.field == field and message in str(caught.value)


def test_a_config_file_that_is_not_a_configuration_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pvtc": {"ratio": -1}}))
    with pytest.raises(ConfigError, match=r"config='.*bad.json' is invalid.*ratio"):
        ModelArgs.parse(f"pretrained=reference:llava,config={bad}")


def test_a_trained_run_carries_its_own_configuration(tmp_path, config_file):
    PVTC_R4.save(tmp_path / "vtc_config.json")
    write_training_record(tmp_path, base_model="reference:llava", stage="compressor")
    with pytest.raises(ConfigError, match="the configuration it was trained with"):
        ModelArgs.parse(f"trained={tmp_path},config={config_file}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_one_is_refused():
    with pytest.raises(ConfigError, match="no CUDA device"):
        ModelArgs.parse("pretrained=reference:llava,device=cuda")


def test_the_argument_string_keeps_values_as_text():
    assert parse_arg_string(" pretrained = /models/1 , batch_size=8,") == {"pretrained": "/models/1",
                                                                          "batch_size": "8"}
    assert set(KEYS) == {"pretrained", "trained", "config", "batch_size", "dtype", "device", "attn_implementation",
                         "stats"}
