"""Search-space translation and the GP searcher (seeds as trials, resume, Ray Tune runs)."""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict

import numpy as np
import pytest

from raybench.search import GPSearcher, SearchSpaceError, decode, to_skopt, to_tune

SPACE = {
    "lr": {"loguniform": [1e-5, 1e-3]},
    "dropout": {"uniform": [0.0, 0.5]},
    "hidden": {"choice": [128, 256]},
    "layers": {"randint": [1, 4]},
}
X_SPACE = {"x": {"uniform": [-2.0, 2.0]}}
OPTIMUM = 0.3


# --------------------------------------------------------------------------- helpers
def score(x: float, seed: int) -> float:
    """Noisy negated 1-D quadratic (maximised at OPTIMUM); noise fixed by the seed."""
    return -((x - OPTIMUM) ** 2) + float(np.random.default_rng(seed).normal(0.0, 0.05))


def drive(searcher, objective, concurrency: int, stop_after: int | None = None, start: int = 0,
          log: list | None = None) -> list:
    """Simulate Tune: keep ``concurrency`` trials in flight, complete them in FIFO order.

    ``objective(config)`` returns the result dict, or ``None`` for an errored trial. Stops
    (returning the trials still in flight) after ``stop_after`` completions; every suggested
    config is appended to ``log``.
    """
    live = []
    done = 0
    counter = start
    while True:
        while len(live) < concurrency:
            config = searcher.suggest(f"t{counter}")
            if config is None or config == GPSearcher.FINISHED:
                break
            json.dumps(config)  # plain Python values only
            live.append((f"t{counter}", config))
            if log is not None:
                log.append(config)
            counter += 1
        if not live or (stop_after is not None and done >= stop_after):
            return live
        trial_id, config = live.pop(0)
        result = objective(config)
        searcher.on_trial_complete(trial_id, result=result, error=result is None)
        done += 1


def x_objective(config: dict) -> dict:
    return {"score": score(config["x"], config["seed"]), "config": config}


# --------------------------------------------------------------------------- space
def test_to_skopt_round_trip():
    dims = to_skopt(SPACE)
    assert [d.name for d in dims] == sorted(SPACE)
    by_name = {d.name: d for d in dims}
    assert by_name["lr"].prior == "log-uniform"
    assert (by_name["lr"].low, by_name["lr"].high) == (1e-5, 1e-3)
    assert by_name["dropout"].prior == "uniform"
    assert (by_name["layers"].low, by_name["layers"].high) == (1, 3)  # high exclusive -> 3
    assert list(by_name["hidden"].categories) == [128, 256]

    from skopt.space import Space

    for point in Space(dims).rvs(50, random_state=0):
        params = decode(SPACE, point)
        json.dumps(params)
        assert type(params["lr"]) is float and 1e-5 <= params["lr"] <= 1e-3
        assert type(params["dropout"]) is float and 0.0 <= params["dropout"] <= 0.5
        assert type(params["layers"]) is int and params["layers"] in (1, 2, 3)
        assert type(params["hidden"]) is int and params["hidden"] in (128, 256)


def test_mixed_choice_values_come_back_exactly():
    space = {"act": {"choice": [None, "relu", 2, 2.5, True]}}
    from skopt.space import Space

    seen = set()
    for point in Space(to_skopt(space)).rvs(60, random_state=1):
        value = decode(space, point)["act"]
        seen.add((type(value).__name__, value))
    assert seen == {("NoneType", None), ("str", "relu"), ("int", 2), ("float", 2.5),
                    ("bool", True)}


def test_to_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    domains = to_tune(SPACE)
    assert isinstance(domains["lr"], Float) and domains["lr"].lower == 1e-5
    assert type(domains["lr"].get_sampler()).__name__ == "_LogUniform"
    assert isinstance(domains["dropout"], Float) and domains["dropout"].upper == 0.5
    assert isinstance(domains["hidden"], Categorical) and domains["hidden"].categories == [128, 256]
    assert isinstance(domains["layers"], Integer)
    assert (domains["layers"].lower, domains["layers"].upper) == (1, 4)


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        ({"lr": {"normal": [0, 1]}}, "'lr': unknown kind 'normal'"),
        ({"lr": {"loguniform": [0.0, 1e-3]}}, "'lr': bad loguniform bounds"),
        ({"p": {"uniform": [0.5, 0.1]}}, "'p': bad uniform bounds"),
        ({"k": {"randint": [1.5, 4]}}, "'k': bad randint bounds"),
        ({"k": {"randint": [3, 3]}}, "'k': bad randint bounds"),
        ({"h": {"choice": []}}, "'h': choice needs a non-empty list"),
        ({"h": {"choice": [1, 1.0]}}, "'h': duplicate choice value"),
        ({"h": {"choice": [[1, 2]]}}, "'h': choice values must be"),
        ({"h": [1, 2]}, "'h': expected {kind: [...]}"),
        ({"seed": {"choice": [1, 2]}}, "'seed' is reserved"),
        ({}, "search space is empty"),
    ],
)
def test_bad_specs_raise_value_error(space, fragment):
    with pytest.raises(ValueError) as info:
        to_skopt(space)
    assert isinstance(info.value, SearchSpaceError)
    assert fragment in str(info.value)


def test_bad_searcher_arguments():
    with pytest.raises(ValueError, match="mode"):
        GPSearcher(X_SPACE, metric="score", mode="maximise")
    with pytest.raises(ValueError, match="seeds"):
        GPSearcher(X_SPACE, metric="score", mode="max", seeds=[0, 0])
    with pytest.raises(ValueError, match="clash"):
        GPSearcher(X_SPACE, metric="score", mode="max", fixed={"x": 1.0})
    with pytest.raises(RuntimeError, match="metric and mode"):
        GPSearcher(X_SPACE).suggest("t0")


# --------------------------------------------------------------------------- searcher, no Tune
def test_seeds_and_mean_tells_without_tune():
    searcher = GPSearcher(X_SPACE, metric="score", mode="max", n_calls=5, n_initial_points=4,
                          fixed={"epochs": 2})
    assert drive(searcher, x_objective, concurrency=4) == []
    assert searcher.suggest("extra") == GPSearcher.FINISHED
    history = searcher.history()
    assert [h["config_id"] for h in history] == list(range(5))
    assert searcher.n_told == len(searcher.optimizer.yi) == 5
    for h in history:
        expected = np.mean([score(h["params"]["x"], s) for s in (0, 1, 2)])
        assert h["mean"] == pytest.approx(expected)
        assert h["objective"] == pytest.approx(-expected)
    told = sorted(searcher.optimizer.yi)
    assert told == pytest.approx(sorted(-h["mean"] for h in history))
    assert searcher.best()["mean"] == max(h["mean"] for h in history)


def test_concurrency_cap():
    searcher = GPSearcher(X_SPACE, metric="score", mode="max", n_calls=3, max_concurrent=2)
    assert searcher.suggest("a") is not None and searcher.suggest("b") is not None
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("a", result={"score": 1.0})
    assert searcher.suggest("c")["config_id"] == 0  # third seed of the first config


def test_gp_actually_optimises():
    # two configurations in flight: proposals after the first 4 go through the kriging believer
    searcher = GPSearcher(X_SPACE, metric="score", mode="max", n_calls=10, seeds=[0],
                          n_initial_points=4, random_state=3)
    drive(searcher, x_objective, concurrency=2)
    xs = np.array([h["params"]["x"] for h in searcher.history()])
    dist = np.abs(xs - OPTIMUM)
    best_x = searcher.best()["params"]["x"]
    median_random = np.median(np.abs(np.random.default_rng(0).uniform(-2, 2, 10_000) - OPTIMUM))
    assert median_random > 0.9
    # 10 uniform draws land within 0.05 of the optimum with probability ~22%,
    # and >= 3 of the 6 model-based ones within 0.15 with probability ~0.8%.
    assert abs(best_x - OPTIMUM) < 0.05
    assert (dist[4:] < 0.15).sum() >= 3


def test_save_restore_continues(tmp_path):
    kwargs = dict(space=X_SPACE | {"hidden": SPACE["hidden"]}, metric="score", mode="max",
                  n_calls=6, n_initial_points=3, random_state=1)
    first, before, after = GPSearcher(**kwargs), [], []
    in_flight = drive(first, x_objective, concurrency=4, stop_after=8, log=before)
    assert len(in_flight) == 4 and 0 < first.n_told < 6
    told_before, xi_before = first.n_told, list(first.optimizer.Xi)
    path = tmp_path / "searcher.pkl"
    first.save(str(path))
    del first  # the driver died

    second = GPSearcher(**kwargs)
    second.restore(str(path))
    assert second.n_told == told_before
    # In-flight trials are re-run: one with its old id, the others with new ids (Tune's
    # RESTART), mapped back through the config they carry.
    (old_id, old_config), *restarted = in_flight
    second.on_trial_complete(old_id, result=x_objective(old_config))
    for i, (_, config) in enumerate(restarted):
        result = x_objective(config)
        flat = {"score": result["score"], "config/config_id": config["config_id"],
                "config/seed": config["seed"]}
        second.on_trial_complete(f"restarted{i}", result=flat if i % 2 else result)
    assert drive(second, x_objective, concurrency=4, start=1000, log=after) == []
    pairs = [(c["config_id"], c["seed"]) for c in before + after]
    assert len(pairs) == len(set(pairs)) == 6 * 3  # nothing handed out twice, nothing lost
    history = second.history()
    assert [h["config_id"] for h in history] == list(range(6))
    assert all(h["status"] == "done" and sorted(h["metrics"]) == [0, 1, 2] for h in history)
    assert second.n_told == len(second.optimizer.yi) == 6
    assert second.optimizer.Xi[:told_before] == xi_before
    assert second.finished and second.suggest("more") == GPSearcher.FINISHED

    # lossless: the same sequence of events without the save/restore proposes the same points
    reference = GPSearcher(**kwargs)
    for trial_id, config in drive(reference, x_objective, concurrency=4, stop_after=8):
        reference.on_trial_complete(trial_id, result=x_objective(config))
    drive(reference, x_objective, concurrency=4, start=1000)
    assert [h["params"] for h in reference.history()] == [h["params"] for h in history]


def test_failed_seeds_without_tune():
    def objective(config):
        if config["config_id"] == 0 or (config["config_id"] == 2 and config["seed"] == 1):
            return None  # errored trial: Tune passes no result
        if config["config_id"] == 3:
            return {"score": math.nan}
        return x_objective(config)

    searcher = GPSearcher(X_SPACE, metric="score", mode="max", n_calls=5, n_initial_points=2)
    drive(searcher, objective, concurrency=4)
    history = searcher.history()
    status = [h["status"] for h in history]
    assert status == ["failed", "done", "done", "failed", "done"]
    assert history[2]["metrics"][1] is None
    assert history[2]["mean"] == pytest.approx(np.mean([history[2]["metrics"][s] for s in (0, 2)]))
    # all-failed configs are told the worst value so far: config 0 (deferred until the first
    # success, config 1) and config 3 (after configs 0-2)
    assert searcher.n_told == 5
    assert history[0]["objective"] == pytest.approx(history[1]["objective"])
    assert history[3]["objective"] == pytest.approx(max(h["objective"] for h in history[:3]))


# --------------------------------------------------------------------------- Ray Tune
# The last seed trial raises; the study must still end with every configuration told. (Failures
# mid-search: test_failed_seeds_without_tune; here one would add a ~10 s actor restart.)
FAIL_CONFIG, FAIL_SEED = 3, 2


def tune_trainable(config):
    from ray import tune

    if config["config_id"] == FAIL_CONFIG and config["seed"] == FAIL_SEED:
        raise RuntimeError("seed trial failed on purpose")
    tune.report({"score": score(config["x"], config["seed"])})


@pytest.fixture(scope="module")
def tune_study(tmp_path_factory):
    """One real Tune study shared by the tests below: 4 configurations x 3 seeds.

    ``num_samples=-1`` (unbounded) with ``max_concurrent_trials=4``: Tune stops only because the
    searcher returns ``FINISHED``. Trials are tiny, so actors are reused (``reuse_actors``).
    """
    import ray
    from ray import cloudpickle, tune

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # workers cannot import this test module
    if ray.is_initialized():  # an earlier test (e.g. Ray Data preprocessing) started Ray
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        searcher = GPSearcher(X_SPACE, metric="score", mode="max", n_calls=4, seeds=[0, 1, 2],
                              n_initial_points=3, fixed={"epochs": 1})
        tuner = tune.Tuner(
            tune.with_resources(tune_trainable, {"cpu": 0.5}),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                        max_concurrent_trials=4, reuse_actors=True),
            run_config=tune.RunConfig(name="study", verbose=0,
                                      storage_path=str(tmp_path_factory.mktemp("tune"))),
        )
        results = tuner.fit()  # returns: the run ends by itself
        yield searcher, results
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(module)


def test_tune_runs_every_seed_as_a_trial(tune_study):
    searcher, results = tune_study
    assert len(results) == 12  # exactly n_calls x seeds, then FINISHED ended the run
    by_config = defaultdict(list)
    for result in results:
        by_config[result.config["config_id"]].append(result)
    assert sorted(by_config) == [0, 1, 2, 3]
    for rows in by_config.values():
        assert sorted(r.config["seed"] for r in rows) == [0, 1, 2]
        params = [{k: v for k, v in r.config.items() if k != "seed"} for r in rows]
        assert all(p == params[0] for p in params) and params[0]["epochs"] == 1


def test_tune_optimiser_told_seed_means(tune_study):
    searcher, results = tune_study
    scores = defaultdict(list)
    for result in results:
        if result.error is None:
            scores[result.config["config_id"]].append(result.metrics["score"])
    assert searcher.n_told == len(searcher.optimizer.yi) == 4
    expected = {cid: -float(np.mean(v)) for cid, v in scores.items()}
    assert sorted(searcher.optimizer.yi) == pytest.approx(sorted(expected.values()))
    for h in searcher.history():
        assert h["objective"] == pytest.approx(expected[h["config_id"]])


def test_tune_failing_seed_does_not_break_search(tune_study):
    searcher, results = tune_study
    assert len(results.errors) == 1
    history = searcher.history()
    assert [h["status"] for h in history] == ["done"] * 4 and searcher.finished
    failed = history[FAIL_CONFIG]["metrics"]
    assert failed[FAIL_SEED] is None and sum(v is not None for v in failed.values()) == 2


def test_tune_checkpoint_restores_searcher(tune_study):
    searcher, results = tune_study
    fresh = GPSearcher(X_SPACE, metric="score", mode="max")
    fresh.restore_from_dir(results.experiment_path)  # Tune saved it with the experiment
    assert fresh.history() == searcher.history() and fresh.finished
    assert fresh.optimizer.yi == searcher.optimizer.yi


# --------------------------------------------------------------------------- JSON state
def test_json_state_resume_proposes_exactly_what_the_uninterrupted_searcher_would():
    """Save mid-search (GP phase, configurations in flight), rebuild from JSON text alone (the
    optimiser by replaying its asks and tells), continue both with the same events."""
    kwargs = dict(space=X_SPACE | {"hidden": SPACE["hidden"]}, metric="score", mode="max",
                  n_calls=9, n_initial_points=3, random_state=4)
    reference, interrupted = GPSearcher(**kwargs), GPSearcher(**kwargs)
    in_flight = drive(interrupted, x_objective, concurrency=3, stop_after=14)
    drive(reference, x_objective, concurrency=3, stop_after=14)
    assert interrupted.n_told >= 4  # the GP (not the random start) proposes the next points
    text = json.dumps(interrupted.get_state())  # what the study directory holds
    assert "pickle" not in text and json.loads(text)["optimizer_log"]
    del interrupted  # the driver died

    resumed = GPSearcher(**kwargs)
    resumed.set_state(json.loads(text))
    assert resumed.optimizer.Xi == reference.optimizer.Xi
    assert resumed.optimizer.yi == reference.optimizer.yi
    for searcher in (reference, resumed):  # the same in-flight trials then report
        for trial_id, config in in_flight:
            searcher.on_trial_complete(trial_id, result=x_objective(config))
    after_reference, after_resumed = [], []
    drive(reference, x_objective, concurrency=3, start=500, log=after_reference)
    drive(resumed, x_objective, concurrency=3, start=500, log=after_resumed)
    assert after_resumed == after_reference and len(after_reference) > 3
    assert resumed.history() == reference.history() and resumed.finished


def test_reopened_trials_are_handed_out_again_then_the_search_continues():
    kwargs = dict(space=X_SPACE, metric="score", mode="max", n_calls=4, n_initial_points=2,
                  random_state=2)
    first = GPSearcher(**kwargs)
    in_flight = drive(first, x_objective, concurrency=2, stop_after=3)
    resumed = GPSearcher(**kwargs)
    resumed.set_state(json.loads(json.dumps(first.get_state())))
    assert resumed.reopen_live() == len(in_flight)  # those trials died with the driver
    again = [resumed.suggest(f"new{i}") for i in range(len(in_flight))]
    key = lambda c: (c["config_id"], c["seed"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(key(c) for _, c in in_flight)
    log = []
    for i, config in enumerate(again):
        resumed.on_trial_complete(f"new{i}", result=x_objective(config))
    drive(resumed, x_objective, concurrency=2, start=900, log=log)
    pairs = [key(c) for c in log] + [key(c) for c in again]
    assert resumed.finished and len(set(pairs)) == len(pairs)


class _Planted:
    """Unpickling this runs code: it creates the file named by ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_pickle_is_never_loaded(tmp_path):
    import pickle

    from raybench.search.state import StateError
    from raybench.study.multiplex import FixedSearcher, StudySearcher

    sentinel = tmp_path / "code-ran"
    evil = pickle.dumps(_Planted(sentinel))
    for name in ("searcher-state-x.pkl", "searcher-state-x.json",
                 "study-searcher-state-x.json"):
        (tmp_path / name).write_bytes(evil)
    gp = GPSearcher(X_SPACE, metric="score", mode="max")
    with pytest.raises(StateError, match="never unpickles"):
        gp.restore(str(tmp_path / "searcher-state-x.pkl"))
    with pytest.raises(StateError, match="never unpickles"):
        gp.restore_from_dir(str(tmp_path))  # Tune's entry point: reads *.json only
    study = StudySearcher({"e": FixedSearcher({}, [0, 1])})
    with pytest.raises(StateError):
        study.restore_from_dir(str(tmp_path))
    assert not sentinel.exists()
    assert GPSearcher.CKPT_FILE_TMPL.endswith(".json")
