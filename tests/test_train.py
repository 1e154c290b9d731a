import pytest
import torch

from bench.method import Method, OptimHP
from bench.models import build_model
from bench.train import Budget, augment_batch, lr_at, train


class _Counting(Method):
    def __init__(self):
        super().__init__()
        self.progress = []

    def post_step(self, model, progress):
        self.progress.append(progress)


def _data(n=100):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train(seed, epochs=2.0, seconds=None, method=None):
    torch.manual_seed(0)
    m = build_model("digits_cnn")
    x, y = _data()
    method = method or Method()
    stats = train(m, method, x, y, hp=OptimHP(lr=0.05, momentum=0.9, weight_decay=0.0),
                  budget=Budget(epochs=epochs, seconds=seconds), batch_size=32, seed=seed,
                  device=torch.device("cpu"), progress=False)
    return m, stats


def test_epoch_budget_is_exact_and_progress_reaches_one():
    meth = _Counting()
    _, stats = _train(0, epochs=1.5, method=meth)
    assert stats.steps == 6  # 4 steps per epoch (32, 32, 32, 4 images)
    assert stats.images == 100 + 2 * 32
    assert stats.epochs == 1.5
    assert meth.progress[-1] == 1.0 and meth.progress == sorted(meth.progress)


def test_seconds_budget_stops_in_time():
    _, stats = _train(0, epochs=None, seconds=0.5)
    assert stats.stopped_by == "seconds"
    assert 0.5 <= stats.train_seconds < 2.0


def test_same_seed_same_weights_other_seed_differs():
    a, _ = _train(1)
    b, _ = _train(1)
    c, _ = _train(2)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_lr_schedule_on_progress():
    assert lr_at(0.0, 0.1, (0.5, 0.75), 0.1) == 0.1
    assert abs(lr_at(0.6, 0.1, (0.5, 0.75), 0.1) - 0.01) < 1e-12
    assert abs(lr_at(0.8, 0.1, (0.5, 0.75), 0.1) - 0.001) < 1e-12


def test_crop_flip_is_a_shift_of_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        found = any(
            torch.equal(out[i], cand) or torch.equal(out[i], cand.flip(-1))
            for dy in range(9) for dx in range(9)
            for cand in [padded[i, :, dy:dy + 8, dx:dx + 8]]
        )
        assert found


def test_a_diverging_run_stops_with_the_reason():
    import pytest

    from bench.train import DivergedError

    torch.manual_seed(0)
    m = build_model("digits_cnn")
    x, y = _data()
    with pytest.raises(DivergedError, match=r"training diverged: loss (nan|inf) at step 20"):
        train(m, Method(), x, y, hp=OptimHP(lr=1e12, momentum=0.9, weight_decay=0.0), budget=Budget(epochs=10),
              batch_size=8, seed=0, device=torch.device("cpu"), progress=False)


class _Kill(Exception):
    pass


def _killing(method, at_step):
    """``method`` whose post_step raises once the trainer has made ``at_step`` steps (a crash)."""
    calls = {"n": 0}
    inner = method.post_step

    def post_step(model, progress):
        inner(model, progress)
        calls["n"] += 1
        if calls["n"] == at_step:
            raise _Kill(at_step)

    method.post_step = post_step
    return method


def _build(name):
    from bench.method import BuildContext
    from bench.registry import METHODS

    torch.manual_seed(0)
    cls = METHODS.get(name)
    method = cls()
    model = method.build(build_model("digits_cnn"), BuildContext(compression=0.5 if cls.compresses else 0.0,
                                                                 example_input=torch.zeros(1, 1, 8, 8),
                                                                 total_steps=16, seed=0))
    return method, model


def _fit(method, model, ckpt=None, identity=""):
    from bench.train import Checkpointing

    x, y = _data()
    return train(model, method, x, y, hp=OptimHP(lr=0.05, momentum=0.9, weight_decay=5e-4),
                 budget=Budget(epochs=4), batch_size=32, seed=3, device=torch.device("cpu"), progress=False,
                 checkpoint=Checkpointing(ckpt, every_steps=3, identity=identity) if ckpt else None)


def test_a_checkpoint_of_another_training_configuration_is_not_resumed(tmp_path, one_thread):
    ckpt = tmp_path / "run.pt"
    method, model = _build("dense")
    with pytest.raises(_Kill):
        _fit(_killing(method, 11), model, ckpt, identity="batch32")
    method, model = _build("dense")
    with pytest.warns(UserWarning, match="another training configuration"):
        stats = _fit(method, model, ckpt, identity="batch64")
    assert stats.resumed_from_step == 0 and stats.steps == 16
    method, model = _build("dense")  # the checkpoint now holds the batch64 training (last saved at step 15)
    assert _fit(method, model, ckpt, identity="batch64").resumed_from_step > 0  # its own: resumed


@pytest.mark.parametrize("name", ["dense", "pruning", "svd_prune", "robust_lowrank", "robust_dlrt"])
def test_a_run_killed_midway_resumes_to_the_same_weights(name, tmp_path, one_thread):
    method, model = _build(name)
    _fit(method, model)
    method.finalize(model)
    want = model.state_dict()

    ckpt = tmp_path / "run.pt"
    method, model = _build(name)
    with pytest.raises(_Kill):  # killed after step 11: the last checkpoint is step 9
        _fit(_killing(method, 11), model, ckpt)
    assert ckpt.exists()
    method, model = _build(name)  # a fresh process: everything rebuilt from the config
    stats = _fit(method, model, ckpt)
    method.finalize(model)
    assert stats.resumed_from_step == 9 and stats.steps == 16
    got = model.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
