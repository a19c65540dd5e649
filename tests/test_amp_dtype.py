"""Mixed precision picks bf16 only on a GPU that computes in it, the one training runs on
(session 36's review: ``is_bf16_supported()`` says yes for a V100's emulated bf16, and reads
the current device). No GPU here: the device queries are stood in for."""
import pytest
import torch

from stream_ae.training import trainer


@pytest.fixture
def gpus(monkeypatch):
    """cuda:0 a V100 (7.0), cuda:1 an A100 (8.0); the current device is 0."""
    capability = {0: (7, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability[index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


@pytest.mark.parametrize("device, want", [("cuda", torch.float16), ("cuda:0", torch.float16),
                                          ("cuda:1", torch.bfloat16)])
def test_bf16_only_where_the_training_gpu_computes_in_it(gpus, device, want):
    assert trainer._amp_dtype(torch.device(device), amp=True) is want


def test_no_mixed_precision_on_the_cpu_or_when_off(gpus):
    assert trainer._amp_dtype(torch.device("cpu"), amp=True) is None
    assert trainer._amp_dtype(torch.device("cuda:1"), amp=False) is None
