"""The papers, declared once: the grid's sweeps (the stage each runs, what each needs first,
which of the report's tables and figures it feeds), the papers' tasks and experiments.

The order of :data:`PAPER_GRID` is the priority in which ``l2o-grid`` runs them: cheap tuning
of the base task first (every comparison needs it), then the long meta-trainings, then the
comparisons, each after the tuning it reads. An evaluation cell also needs the meta-training
cell of its own experiment and seed (``experiment=<x>``, ``seed=<s>``) to have reached its
iteration target; ``l2o-grid`` derives that from the cell's overrides.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("tune", "meta_train", "evaluate")
META_TRAIN_SWEEP = "paper_meta_train"


@dataclass(frozen=True)
class Sweep:
    name: str  # sweeps/<name>.yaml
    stage: str  # one of STAGES
    needs: tuple[str, ...] = ()  # sweeps whose every cell must be done first
    results: str = ""  # the paper's tables and figures it feeds, in words
    feeds: tuple[str, ...] = ()  # the report's items (tables, figures) its cells feed

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"sweep {self.name}: stage {self.stage!r} not in {STAGES}")


PAPER_GRID: tuple[Sweep, ...] = (
    Sweep("tune_activations", "tune", results="tuned baselines, base MLP x 4 activations"),
    Sweep(META_TRAIN_SWEEP, "meta_train", results="the learned optimizers", feeds=("meta",)),
    Sweep("table2", "evaluate", ("tune_activations",), "Table 2, Fig. 4", ("table2", "fig4")),
    Sweep("table4", "evaluate", ("tune_activations",), "Table 4", ("table4",)),
    Sweep("fig9", "evaluate", ("tune_activations",), "Fig. 9 (control experiments)", ("fig9",)),
    Sweep("tune_horizons", "tune", results="tuned baselines at 2,000 and 10,000 steps"),
    Sweep("fig2", "evaluate", ("tune_activations", "tune_horizons"), "Fig. 2, Fig. 3",
          ("fig2", "fig3")),
    Sweep("tune_depth", "tune", results="tuned baselines, MLPs of 2-10 layers"),
    Sweep("fig5_6", "evaluate", ("tune_activations", "tune_depth"), "Figs. 5-6",
          ("fig5", "fig6")),
    Sweep("tune_cnn", "tune", results="tuned baselines, CNNs"),
    Sweep("fig7", "evaluate", ("tune_cnn",), "Fig. 7", ("fig7",)),
    Sweep("tune_lstm", "tune", results="tuned baselines, sine LSTMs"),
    Sweep("fig8_table3", "evaluate", ("tune_lstm",), "Fig. 8, Table 3", ("fig8", "table3")),
    Sweep("tune_dm_paper", "tune", results="tuned baselines of paper 2's tasks"),
    Sweep("dm_paper", "evaluate", ("tune_dm_paper",), "paper 2: MNIST variants",
          ("dm_generalisation",)),
    Sweep("dm_quadratic_eval", "evaluate", ("tune_dm_paper",), "paper 2: quadratics",
          ("dm_quadratic",)),
)
SWEEPS = {s.name: s for s in PAPER_GRID}


def sweep(name: str) -> Sweep:
    try:
        return SWEEPS[name]
    except KeyError:
        raise ValueError(f"unknown sweep {name!r}; the paper grid's sweeps are "
                         f"{list(SWEEPS)}") from None


def needs(*items: str) -> str:
    """The sweeps whose cells the report's ``items`` are made from, then the sweeps those need
    first, in grid order: e.g. ``needs("table2") == "table2, tune_activations"``."""
    feeders = [s for s in PAPER_GRID if set(s.feeds) & set(items)]
    if not feeders:
        raise ValueError(f"no sweep of the paper grid feeds {items}")
    names = [s.name for s in feeders] + [n for s in feeders for n in s.needs]
    return ", ".join(dict.fromkeys(names))


# ----------------------------------------------------------------------------- tasks
# Task keys (``baselines.task_key``) of the papers' optimizees.

BASE = "mnist-mlp-sigmoid-l1"
ACTIVATIONS = {a: f"mnist-mlp-{a}-l1" for a in ("sigmoid", "relu", "elu", "tanh")}
RELU = ACTIVATIONS["relu"]
DEPTHS = {d: f"mnist-mlp-sigmoid-l{d}" for d in range(1, 11)}
CNNS = {"c-c-p-f, MNIST": "mnist-cnn-c-c-p-f",
        "c-c-p-c-c-p-f-f, MNIST": "mnist-cnn-c-c-p-c-c-p-f-f",
        "c-c-p-f, CIFAR-10": "cifar10-cnn-c-c-p-f"}
LSTMS = {"Default": "sine_lstm-l1-noise0.1", "2 Layers": "sine_lstm-l2-noise0.1",
         "Small Noise": "sine_lstm-l1-noise0.01"}
DM_TESTS = {"base MLP": BASE, "40 hidden units": "mnist-mlp-sigmoid-l1-h40",
            "2 hidden layers": "mnist-mlp-sigmoid-l2", "ReLU": RELU}
QUADRATIC = "quadratic-uniform-d10"  # paper 2's test quadratics, unless the runs say otherwise

# ----------------------------------------------------------------------------- experiments
# conf/experiment/<name>.yaml -> the learned optimizer it meta-trains. The order is the
# report's (meta-training figure, tables).

EXPERIMENTS: dict[str, str] = {
    "rnnprop": "rnnprop", "dmoptimizer": "dmoptimizer", "rnnprop_no_rs": "rnnprop",
    "rnnprop_no_cc": "rnnprop", "dmoptimizer_tricks": "dmoptimizer",
    "dm_quadratic": "dmoptimizer_official",
}
