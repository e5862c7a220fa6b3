"""Speed levers change how a step computes, never what: attention kernels, fused AdamW, allocator."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from experiments.memory import ReuseFreedMemory
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE
from variants.towers import TextTower, VisionTower, use_attention_kernel

from helpers import REPO

VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def _vision(attention: str) -> VisionTower:
    torch.manual_seed(0)
    return VisionTower("vit_base_patch16_clip_224", embed_dim=16, model_kwargs=VIT, attention=attention)


def _text(attention: str, causal: bool = True) -> TextTower:
    torch.manual_seed(0)
    pool = "eot" if causal else "mean"
    return TextTower(50, 12, 32, 2, 2, embed_dim=16, causal=causal, pool=pool, attention=attention)


def _texts() -> torch.Tensor:
    ids = torch.randint(1, 50, (4, 12))
    ids[0, 5:] = 0  # padding after a short text: masked out of the keys of a bidirectional tower
    return ids


def _embed_and_grads(tower: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    embedding = tower(inputs)[0]
    embedding.square().sum().backward()
    return embedding.detach(), [p.grad for p in tower.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    "build, inputs",
    [
        (_vision, lambda: torch.randn(4, 3, 32, 32)),
        (_text, _texts),
        (lambda kernel: _text(kernel, causal=False), _texts),
    ],
    ids=["vit", "causal-text", "bidirectional-text"],
)
def test_explicit_attention_computes_what_the_fused_kernel_does(build, inputs) -> None:
    x = inputs()
    fused, fused_grads = _embed_and_grads(build("fused"), x)
    explicit, explicit_grads = _embed_and_grads(build("explicit"), x)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    assert len(fused_grads) == len(explicit_grads) > 0
    for a, b in zip(explicit_grads, fused_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_auto_attention_is_explicit_on_cpu_under_bf16_and_fused_in_float32() -> None:
    tower = _vision("auto")
    layers = [m for m in tower.modules() if hasattr(m, "fused_attn")]
    assert len(layers) == 2
    images = torch.randn(2, 3, 32, 32)
    tower(images)
    assert all(layer.fused_attn for layer in layers)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = tower(images)[0]
    assert not any(layer.fused_attn for layer in layers)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = _vision("fused")(images)[0]
    # The same math; bf16 rounds the scores before the softmax where the fused kernel does not.
    assert torch.nn.functional.cosine_similarity(low.float(), reference.float()).min() > 0.99
    tower.to(torch.bfloat16)(images.bfloat16())  # bf16 weights without autocast: explicit too
    assert not any(layer.fused_attn for layer in layers)


def test_attention_kernel_can_be_chosen_again() -> None:
    tower = _vision("auto")
    use_attention_kernel(tower, "explicit")  # replaces auto: its hook must not switch back
    images = torch.randn(2, 3, 32, 32)
    tower(images)
    layers = [m for m in tower.modules() if hasattr(m, "fused_attn")]
    assert not any(layer.fused_attn for layer in layers)
    assert all(len(layer._forward_pre_hooks) == 1 for layer in layers)  # one hook, however many calls


def test_bad_attention_kernels_are_clear_errors() -> None:
    with pytest.raises(UserError, match="unknown attention kernel 'flash'.*'auto', 'fused' or 'explicit'"):
        use_attention_kernel(torch.nn.Linear(2, 2), "flash")
    with pytest.raises(UserError, match="no timm attention layer"):
        VisionTower("resnet10t", attention="explicit")
    VisionTower("resnet10t")  # auto on a CNN: nothing to choose, no error


def test_fused_optimizer_is_a_switch() -> None:
    def optimizer(fused: bool) -> torch.optim.Optimizer:
        module = ContrastiveModule(_vision("auto"), _text("auto"), [InfoNCE()], fused_optimizer=fused)
        module.trainer = type("T", (), {"estimated_stepping_batches": 10})()  # only what the schedule reads
        return module.configure_optimizers()["optimizer"]

    assert optimizer(True).defaults["fused"] is True
    assert not optimizer(False).defaults["fused"]


_FAULTS = """
import resource, torch
from experiments.memory import keep_freed_memory

def faults():  # page faults of allocating, touching and freeing 64 MiB a second time
    torch.empty(2**24).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(2**24).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
assert keep_freed_memory(True)
print(default, faults())
"""


@pytest.mark.cli
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc allocator setting")
def test_reused_memory_is_not_faulted_in_again() -> None:
    # Fresh processes: a thread that glibc moved to a secondary malloc arena (on lock contention,
    # e.g. while torch's threads start) has its large blocks mmapped whatever the setting, so one
    # process in a few shows no gain (seen once in a clean-clone run); three tries tell that apart
    # from a setting that does nothing.
    results = []
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, cwd=REPO, check=True)
        default, kept = map(int, run.stdout.split())
        assert default > 4000  # 16,384 pages of 4 KiB returned to the OS and faulted in again
        results.append(kept)
        if kept < 500:
            return
    raise AssertionError(f"freed memory was faulted in again in 3 fresh processes: {results} page faults")


def test_reuse_freed_memory_callback_acts_on_cpu_fits_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch import Trainer

    import experiments.memory

    calls: list[bool] = []
    monkeypatch.setattr(experiments.memory, "keep_freed_memory", lambda keep=True: calls.append(keep) or True)
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    callback = ReuseFreedMemory()
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    callback.setup(trainer, None, "validate")
    assert not callback.active and calls == []
    callback.setup(trainer, None, "fit")
    callback.teardown(trainer, None, "fit")
    assert calls == [True, False] and not callback.active
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")  # the user's own tuning wins
    callback.setup(trainer, None, "fit")
    assert calls == [True, False] and not callback.active


def test_filip_trains_with_bf16_gemms_only_when_asked_and_always_scores_in_float32() -> None:
    from variants.objectives import TokenwiseInfoNCE

    module = ContrastiveModule(_vision("auto"), _text("auto"), [TokenwiseInfoNCE(token_dim=16)])
    term = next(iter(module.terms.values()))
    assert term.similarity_dtype == "float32"  # exact unless a preset opts in (filip.yaml does)
    batch = {"image": torch.randn(4, 3, 32, 32), "text": _texts()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = module.encode(batch)
        exact = term(encoded)["loss"]
        term.similarity_dtype = "auto"
        assert term._gemm_dtype(torch.zeros(1)) == torch.bfloat16
        fast = term(encoded)["loss"]
        i2t, t2i = term.score(encoded, encoded)
        image, text = term._project(encoded, "image"), term._project(encoded, "text")  # as score projects
    assert term._gemm_dtype(torch.zeros(1)) == torch.float32  # no autocast: the projected tokens' float32
    assert fast.dtype == exact.dtype == torch.float32 and fast != exact  # the bf16 path ran ...
    torch.testing.assert_close(fast, exact, atol=0.02, rtol=0.01)  # ... and stayed close
    from variants.losses import filip_similarity

    assert i2t.dtype == torch.float32
    torch.testing.assert_close((i2t, t2i), filip_similarity(image, text, encoded.text_mask))  # float32 GEMMs
