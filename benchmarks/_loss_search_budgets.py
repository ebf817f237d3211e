"""The budgets of :mod:`benchmarks.loss_search`: which preset each row runs, with which
overrides, and how the row names its budget (smaller than the papers' unless it says so).
A table of data kept apart from the script that runs it, so a reader can hold each whole.
"""

QUALITY = {
    # name: (preset, overrides, what the budget is)
    "taylorglo_digits": (
        "taylorglo/digits_mlp",
        [
            "estimator.searcher.population=20",
            "meta_steps=20",
            "estimator.fitness_steps=500",
            "meta_test.steps=3000",
        ],
        "CMA-ES 20 x 20 gens, fitness 500 steps; test 3000 steps",
    ),
    "evomal_digits": (
        "evomal/digits_mlp",
        [
            "estimator.searcher.population=10",
            "meta_steps=10",
            "estimator.local_search.steps=50",
            "meta_test.steps=3000",
        ],
        "GP 10 x 10 gens, local search 50, filter 100 steps + gradient equivalence (preset), fitness 500; test 3000 steps",
    ),
    "gplfl_digits": (
        "gplfl/digits_mlp",
        [
            "estimator.searcher.population=10",
            "meta_steps=10",
            "meta_test.steps=3000",
        ],
        "GP 10 x 10 gens, no local search, filter 100 steps + gradient equivalence (preset), fitness 500; test 3000 steps",
    ),
    "taylorglo_fmnist": (
        "taylorglo/fmnist_cnn",
        [
            "task.train_size=10000",
            "task.val_size=2000",
            "task.batch_size=64",
            "estimator.searcher.population=10",
            "estimator.evaluator.max_batch=10",
            "meta_steps=8",
            "estimator.fitness_steps=200",
            "meta_test.steps=2000",
        ],
        "CMA-ES 10 x 8 gens, fitness 200 steps; 10k train images; test 2000 steps",
    ),
    "evomal_fmnist": (
        "evomal/fmnist_cnn",
        [
            "task.train_size=10000",
            "task.val_size=2000",
            "task.batch_size=64",
            "estimator.searcher.population=25",  # EvoMAL's; with 8 the filter left too few
            "meta_steps=10",
            "estimator.local_search.steps=20",
            "estimator.fitness_steps=200",
            "meta_test.steps=2000",
        ],
        "GP 25 x 10 gens, local search 20, filter 100 + gradient equivalence (preset), fitness 200; 10k train images; test 2000 steps",
    ),
    "gplfl_fmnist": (
        "gplfl/fmnist_cnn",
        [
            "task.train_size=10000",
            "task.val_size=2000",
            "task.batch_size=64",
            "estimator.searcher.population=25",  # as evomal_fmnist, so the two compare
            "meta_steps=10",
            "estimator.fitness_steps=200",
            "meta_test.steps=2000",
        ],
        "GP 25 x 10 gens, no local search, filter 100 + gradient equivalence (preset), fitness 200; 10k train images; test 2000 steps",
    ),
    "taylorglo_diabetes": (
        "taylorglo/digits_mlp",
        [
            "task=diabetes",  # the polynomial in (target, prediction) covers regression too
            "task.batch_size=128",
            "model.hidden=[1000,1000]",
            "estimator.filters=[]",  # the invariant is stated for softmax classifiers
            "estimator.searcher.population=10",
            "meta_steps=6",
            "estimator.fitness_steps=500",
            "meta_test.steps=2000",
        ],
        "CMA-ES 10 x 6 gens, fitness 500 steps; MLP 10-1000-1000-1; test 2000 steps",
    ),
    "evomal_diabetes": (
        "evomal/diabetes_mlp",
        [
            "estimator.searcher.population=10",
            "meta_steps=6",
            "estimator.local_search.steps=50",
            "estimator.filters=[{_component_: prediction_descent, steps: 300, equivalence_tol: 0.01}]",
            "meta_test.steps=2000",
        ],
        "GP 10 x 6 gens, local search 50, Adam filter 300 steps (preset 1000) + gradient equivalence, fitness 500; MLP 10-1000-1000-1; test 2000 steps",
    ),
    "gplfl_diabetes": (
        "gplfl/diabetes_mlp",
        [
            "estimator.searcher.population=10",
            "meta_steps=6",
            "estimator.filters=[{_component_: prediction_descent, steps: 300, equivalence_tol: 0.01}]",
            "meta_test.steps=2000",
        ],
        "GP 10 x 6 gens, no local search, Adam filter 300 steps (preset 1000) + gradient equivalence, fitness 500; MLP 10-1000-1000-1; test 2000 steps",
    ),
}


COST = {
    # name: (preset, overrides, generations timed)
    "TaylorGLO, digits MLP 64-100-10, 25 x 50, fitness 500 steps (measured in full)": (
        "taylorglo/digits_mlp",
        ["estimator.searcher.population=25", "estimator.fitness_steps=500"],
        50,
    ),
    "TaylorGLO (regression), Diabetes MLP 10-1000-1000-1, 25 per gen, fitness 500 steps": (
        "taylorglo/digits_mlp",
        [
            "task=diabetes",
            "task.batch_size=128",
            "model.hidden=[1000,1000]",
            "estimator.filters=[]",
            "estimator.searcher.population=25",
            "estimator.fitness_steps=500",
        ],
        2,
    ),
    "EvoMAL, digits MLP 64-100-10, full settings (25 per gen)": ("evomal/digits_mlp", [], 3),
    "EvoMAL, Diabetes MLP 10-1000-1000-1, full settings (25 per gen)": (
        "evomal/diabetes_mlp",
        [],
        2,
    ),
}
