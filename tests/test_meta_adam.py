"""The meta-optimizer is torch.optim.Adam's update without torch.optim's imports."""

import subprocess
import sys

import torch

from l2o_pipeline.meta.meta_adam import MetaAdam


def _params():
    torch.manual_seed(0)
    return [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True),
            torch.randn(2, requires_grad=True)]


def _run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        for k, p in enumerate(params):
            if not (k == 2 and t % 2):  # a parameter without a gradient at some steps
                p.grad = torch.sin(p.detach() * (t + 1) + k)
        opt.step()


def test_same_trajectory_as_torch_adam():
    ours, theirs = _params(), _params()
    _run(MetaAdam(ours, lr=1e-2), ours, 7)
    _run(torch.optim.Adam(theirs, lr=1e-2), theirs, 7)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_state_dict_interchangeable_with_torch_adam():
    """A training state saved with torch.optim.Adam resumes here, and the other way round."""
    a, b = _params(), _params()
    torch_opt = torch.optim.Adam(a, lr=3e-3)
    _run(torch_opt, a, 3)
    ours = MetaAdam(b, lr=1.0)
    with torch.no_grad():
        for p, q in zip(b, a):
            p.copy_(q)
    ours.load_state_dict(torch_opt.state_dict())
    assert ours.group["lr"] == 3e-3
    _run(torch_opt, a, 4, start=3)
    _run(ours, b, 4, start=3)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    back = torch.optim.Adam(_params(), lr=1.0)
    back.load_state_dict(ours.state_dict())
    assert back.param_groups[0]["lr"] == 3e-3
    assert torch.equal(back.state_dict()["state"][0]["exp_avg"], ours.state[0]["exp_avg"])


def test_meta_training_does_not_import_dynamo(tmp_path):
    """torch._dynamo and sympy cost ~150 MB of RSS; meta-training needs neither."""
    code = (
        "import sys, torch\n"
        "from l2o_pipeline.data import synthetic_dataset\n"
        "from l2o_pipeline.meta import MetaTrainSettings, meta_train\n"
        "from l2o_pipeline.optimizees import MLPTask\n"
        "from l2o_pipeline.optimizers import RNNprop\n"
        "task = MLPTask(synthetic_dataset('synthetic_mnist', n=256))\n"
        "s = MetaTrainSettings(n_iterations=1, steps_per_run=4, unroll=2, selection='last')\n"
        f"meta_train(RNNprop(), task, s, {str(tmp_path)!r}, progress=False)\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
