"""Training objectives: the registry, the trainer's step, the rows, and a real robustness gain."""

import copy
import dataclasses
import json

import pytest
import torch

from bench.config import RunConfig
from bench.method import Method, OptimHP, ParamError, build_optimizer
from bench.models import build_model
from bench.objective import Objective, collapsed, make_objective
from bench.registry import OBJECTIVES, RegistryError
from bench.train import train_step


def test_builtin_objectives_and_their_params():
    assert {"standard", "fgsm_rs", "pgd_at", "trades"} <= set(OBJECTIVES.names())
    pgd = make_objective("pgd_at", {"eps": "0.3", "steps": "10"})
    assert (pgd.params.eps, pgd.params.steps, pgd.params.alpha) == (0.3, 10, pytest.approx(0.075))
    assert make_objective("fgsm_rs", {}, adv_eps=0.3).params.alpha == pytest.approx(0.375)  # 1.25 eps
    assert make_objective("trades", {"eps": 0.1}).params.beta == 6.0
    assert make_objective("pgd_at", {}, adv_eps=0.3).params == pgd.params  # eps from the track
    with pytest.raises(ParamError, match="unknown parameter 'step'.*known parameters: alpha, eps, steps"):
        make_objective("pgd_at", {"eps": "0.3", "step": "10"})
    with pytest.raises(ParamError, match="eps must be in"):
        make_objective("pgd_at", {"eps": "3"})
    with pytest.raises(ParamError, match="needs eps"):
        make_objective("pgd_at", {})
    with pytest.raises(RegistryError, match="Did you mean: pgd_at.*Available objectives: fgsm_rs, pgd_at"):
        make_objective("pgdat", {})


@pytest.mark.parametrize("track", ["mnist-lenet5-e10", "cifar10-vgg16q-e25", "cifar10-vgg16"])
def test_every_paper_track_says_its_adversarial_eps_and_keeps_its_ids(track, repo_root):
    """MNIST trains and is attacked at 0.3, CIFAR-10 at 8/255 (the standard threat models); declaring it
    changes no clean-trained configuration's id (adv_eps acts only through an objective's parameters)."""
    import bench.tracks  # noqa: F401
    from bench.identity import config_id, training_id
    from bench.prepare import eval_protocol_for, prepare
    from bench.registry import TRACKS

    t = TRACKS.get(track)
    want = 0.3 if track.startswith("mnist") else 8 / 255
    assert t.adv_eps == pytest.approx(want)
    assert make_objective("fgsm_rs", {}, adv_eps=t.adv_eps).params.eps == pytest.approx(want)
    protocol = eval_protocol_for(t, t.adv_eps)
    assert protocol.headline_eps == pytest.approx(want) and want in protocol.linf_eps
    assert want in protocol.pgd_linf_eps  # PGD-50 beside AutoAttack at the training ε
    assert set(t.eval.pgd_linf_eps) <= set(protocol.pgd_linf_eps) and set(t.eval.linf_eps) <= set(protocol.linf_eps)
    cfg = RunConfig(method="dense", track=track, seed=0)
    resolved = prepare(cfg).resolved()
    no_adv = copy.deepcopy(resolved)
    no_adv["track"].pop("adv_eps", None)
    assert config_id(no_adv) == config_id(resolved) and training_id(no_adv) == training_id(resolved)


def test_bad_objective_is_refused_before_any_work(tmp_path):
    from bench.cli import main

    assert main(["run", "--method", "dense", "--objective", "pgd_at[eps=0.1,stepz=3]",
                 "--results-dir", str(tmp_path)]) == 2
    assert main(["sweep", "--methods", "dense", "--objectives", "standard,madry", "--results-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.glob("*.parquet"))


class _GradRecorder(Method):
    """Records every parameter's .grad as post_step sees it."""

    compresses = False

    def __init__(self):
        super().__init__()
        self.grads = None

    def post_step(self, model, progress):
        self.grads = [p.grad.detach().clone() for p in model.parameters()]


class _Leaky(Objective):
    """An objective that generates its attack carelessly, with loss.backward() (fills the parameters' .grad)."""

    adversarial = True

    def generate(self, model, x, y):
        xa = x.detach().clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xa), y).backward()
        return (x + 0.1 * xa.grad.sign()).clamp(0, 1).detach()

    def loss(self, model, x, y, x_adv):
        return torch.nn.functional.cross_entropy(model(x_adv), y)


@pytest.mark.parametrize("name", ["pgd_at", "trades", "leaky"])
def test_the_attack_gradients_do_not_reach_post_step(name, one_thread):
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    objective = _Leaky() if name == "leaky" else make_objective(name, {"eps": 0.1, "steps": 3})
    seen = {}
    generate = objective.generate
    objective.generate = lambda *a: seen.setdefault("x_adv", generate(*a))
    method = _GradRecorder()
    optimizer = build_optimizer(method, model, OptimHP(lr=0.1, momentum=0.0, weight_decay=0.0))
    before = copy.deepcopy(model).train()
    model.train()
    train_step(model, method, optimizer, objective, x, y, lr=0.1, progress_after=lambda: 0.5)
    # the gradient of the training loss alone, at the generated point, on the weights before the step
    expected = torch.autograd.grad(objective.loss(before, x, y, seen["x_adv"]), list(before.parameters()))
    for got, want in zip(method.grads, expected):
        torch.testing.assert_close(got, want)


def test_collapse_flag():
    assert not collapsed([0.2, 0.4, 0.5, 0.45])
    assert collapsed([0.3, 0.5, 0.1])  # below 0.3 x the best before it
    assert not collapsed([0.0, 0.0])


def _robust_acc(rows, results_dir, eps):
    """PGD accuracy (10 steps) at ``eps`` on the whole test split of each row's stored model."""
    from bench.metrics.attacks import attack_curve
    from bench.registry import TRACKS
    from bench.build import load_dataset_for
    from bench.reevaluate import load_stored_model

    track = TRACKS.get(rows[0]["track"])
    data = load_dataset_for(track, None)
    models = [load_stored_model(r, results_dir, data, track, device=torch.device("cpu"))[0] for r in rows]
    return [attack_curve(m, data.x_test, data.y_test, [eps], attack="pgd", steps=10)[0]["acc"] for m in models]


def test_pgd_at_raises_pgd_accuracy_on_digits(tmp_path, one_thread, capsys):
    """Real training on digits, same seed and epochs: pgd_at at ε = 0.1 beats standard under PGD at 0.1."""
    from bench import runner

    base = RunConfig(method="dense", track="digits-cnn", epochs=4, skip_attacks=True, results_dir=str(tmp_path),
                     progress=False)
    std, _ = runner.run(base)
    adv, _ = runner.run(dataclasses.replace(base, objective="pgd_at", objective_params={"eps": "0.1", "steps": "3"}))
    assert std["objective"] == "standard" and std["objective_params"] == "{}"
    assert adv["objective"] == "pgd_at" and json.loads(adv["objective_params"])["steps"] == 3
    assert adv["config_id"] != std["config_id"]
    assert (std["train_forward_passes"], adv["train_forward_passes"]) == (std["steps"], 4 * adv["steps"])
    assert len(adv["train_pgd_curve"]) == 4 and adv["catastrophic_overfitting"] in (True, False)
    assert json.loads(adv["config_json"])["eval_protocol"]["headline_eps"] == 0.1
    acc_std, acc_adv = _robust_acc([std, adv], tmp_path, 0.1)  # measured: 0.56 and 0.76
    assert acc_adv > acc_std + 0.1, (acc_std, acc_adv)
    # never averaged together, and a filter away from each other
    from bench.cli import main
    from bench.results import read_results
    from bench.summary import aggregate, summary_table

    runs = read_results(tmp_path)
    assert sorted(aggregate(runs)["objective"]) == ["pgd_at", "standard"]
    assert list(summary_table(runs)["objective"]) == ["pgd_at[alpha=0.0833333,eps=0.1,steps=3]", "standard"]
    capsys.readouterr()
    assert main(["show", "--results-dir", str(tmp_path), "--objective", "pgd_at"]) == 0
    out = capsys.readouterr().out
    assert "pgd_at[alpha=0.0833333,eps=0.1,steps=3]" in out and "standard" not in out


def test_sweep_takes_objectives_from_flags_and_files(tmp_path, capsys):
    from bench.cli import main

    grid = tmp_path / "grid.toml"
    grid.write_text('methods = ["dense"]\nobjectives = ["standard", "pgd_at[eps=0.1,steps=2]"]\nseeds = [0, 1]\n')
    assert main(["sweep", "--file", str(grid), "--dry-run", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 configurations" in out and out.count("objective=pgd_at[eps=0.1,steps=2]") == 2


def test_old_rows_load_as_standard_with_their_ids(repo_root):
    """A committed row written before objectives existed: 'standard', and its config id and training
    identity recomputed exactly as when it was written."""
    from bench.results import read_results
    from bench.identity import config_id, training_id
    from bench.prepare import prepare

    df = read_results(repo_root / "results")
    r = df[df["run_id"] == "1d1c4057cb7f"].iloc[0]
    assert "objective" not in json.loads(r["config_json"])  # written before objectives existed
    assert (r["objective"], r["objective_params"]) == ("standard", "{}")
    resolved = json.loads(r["config_json"])
    assert config_id(resolved) == r["config_id"] == "cfg-417fa2ad9455"
    assert prepare(RunConfig(**resolved["run"])).config_id() == r["config_id"]
    assert training_id(resolved) == "75f4a32e8d11f9c2"  # the value the code before objectives gave
