"""l2o_pipeline: learned optimizers (RNNprop, DMoptimizer) reproduced, and made a tool."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import l2o_pipeline` stays cheap for the CLI and Hydra's tab completion.
    if name == "LearnedOptimizer":
        from l2o_pipeline.torch_optim import LearnedOptimizer

        return LearnedOptimizer
    raise AttributeError(f"module 'l2o_pipeline' has no attribute {name!r}")
