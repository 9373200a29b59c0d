"""The paper grid, declared once: its sweeps, the stage each runs, what each needs first.

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
    results: str = ""  # the paper's tables and figures it feeds

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"sweep {self.name}: stage {self.stage!r} not in {STAGES}")


PAPER_GRID: tuple[Sweep, ...] = (
    Sweep("tune_activations", "tune", results="tuned baselines, base MLP x 4 activations"),
    Sweep(META_TRAIN_SWEEP, "meta_train", results="the learned optimizers"),
    Sweep("table2", "evaluate", ("tune_activations",), "Table 2, Fig. 4"),
    Sweep("table4", "evaluate", ("tune_activations",), "Table 4"),
    Sweep("fig9", "evaluate", ("tune_activations",), "Fig. 9 (control experiments)"),
    Sweep("tune_horizons", "tune", results="tuned baselines at 2,000 and 10,000 steps"),
    Sweep("fig2", "evaluate", ("tune_activations", "tune_horizons"), "Fig. 2, Fig. 3"),
    Sweep("tune_depth", "tune", results="tuned baselines, MLPs of 2-10 layers"),
    Sweep("fig5_6", "evaluate", ("tune_activations", "tune_depth"), "Figs. 5-6"),
    Sweep("tune_cnn", "tune", results="tuned baselines, CNNs"),
    Sweep("fig7", "evaluate", ("tune_cnn",), "Fig. 7"),
    Sweep("tune_lstm", "tune", results="tuned baselines, sine LSTMs"),
    Sweep("fig8_table3", "evaluate", ("tune_lstm",), "Fig. 8, Table 3"),
    Sweep("tune_dm_paper", "tune", results="tuned baselines of paper 2's tasks"),
    Sweep("dm_paper", "evaluate", ("tune_dm_paper",), "paper 2: MNIST variants"),
    Sweep("dm_quadratic_eval", "evaluate", ("tune_dm_paper",), "paper 2: quadratics"),
)
SWEEPS = {s.name: s for s in PAPER_GRID}


def sweep(name: str) -> Sweep:
    try:
        return SWEEPS[name]
    except KeyError:
        raise ValueError(f"unknown sweep {name!r}; the paper grid's sweeps are "
                         f"{list(SWEEPS)}") from None
