"""clcrec/device.py: what `--device` and `--amp` resolve to, and the refusals of bad names."""

import json

import pytest
import torch

from clcrec.device import amp_mode, bind_device, resolve_device
from common.errors import UserError
from tests.support import config, quiet

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_cpu_resolve_and_amp_follows_the_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if NO_CUDA:
        assert resolve_device("auto") == torch.device("cpu")
    assert amp_mode("auto", torch.device("cpu")) == "fp32" and amp_mode("auto", torch.device("cuda", 0)) == "bf16"
    assert amp_mode("fp16", torch.device("cpu")) == "fp16"


@pytest.mark.parametrize("name, says", [
    ("bogus", r"^--device 'bogus' is not a device; use auto, cpu, cuda or cuda:N$"),
    ("meta", r"^--device 'meta': only cpu and cuda devices are supported"),
    pytest.param("cuda", r"^--device cuda was asked for but no CUDA device is available; use --device cpu$",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="checks the refusal where no GPU is present")),
    pytest.param("cuda:3", r"no CUDA device is available",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="checks the refusal where no GPU is present")),
])
def test_bad_device_names_are_one_line_that_says_what_to_pass(name, says):
    with pytest.raises(UserError, match=says):
        resolve_device(name)


def test_a_cuda_device_is_bound_before_the_step_uses_it():
    """A CUDA device becomes the thread's current device (its graph's capture stream must be on
    it); a CPU device binds nothing."""
    bound = []
    bind_device(torch.device("cuda", 1), set_device=bound.append)
    bind_device(torch.device("cpu"), set_device=bound.append)
    assert bound == [torch.device("cuda", 1)]


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_captured_step_on_a_second_gpu_trains(tiny_dataset, tiny_cache, tmp_path):
    """--device cuda:1 in one process: the CUDA graph records the step on GPU 1 and its replays
    train exactly as eager steps there (an empty graph would leave the losses where they were)."""
    from clcrec.train.trainer import train

    torch.backends.cuda.matmul.allow_tf32 = False
    losses = {}
    for graph in ("off", "on"):
        cfg = config(tiny_dataset, tiny_cache, tmp_path / graph, epochs=3, device="cuda:1", amp="fp32",
                     scoring="dense", cuda_graph=graph)
        train(cfg, console=quiet())
        losses[graph] = [json.loads(x)["loss"] for x in (tmp_path / graph / "metrics.jsonl").read_text().splitlines()]
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4)
    assert losses["on"][-1] < losses["on"][0]
