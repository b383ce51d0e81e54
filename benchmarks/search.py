"""Search benchmark: raybench's GPSearcher on Ray Tune vs CareBench's sequential gp_minimize loop.

Objective: the Branin function (global minimum 0.397887) with seed-dependent noise, a stand-in
for "validation loss of a configuration trained with seed s": every (configuration, seed) pair
evaluates ``branin(x) + N(0, noise)`` with an RNG seeded by the seed *and* the point, then
sleeps ``--sleep`` seconds to stand for training. Each configuration runs on 3 seeds.

- (a) raybench: :class:`raybench.search.GPSearcher` in Ray Tune, every seed a separate trial,
  ``--concurrency`` trials at once (2 / concurrency CPUs each on a 2-CPU node), the optimiser
  told the mean over seeds; ``reuse_actors=True`` (``--no-reuse`` adds a run without);
- (b) CareBench: ``skopt.gp_minimize`` with the same calls, initial points and acquisition,
  each call training the 3 seeds one after the other and returning the mean.

Repeated for ``--repeats`` random states. Prints the best noise-free Branin value each reached
(parity within noise expected), wall times and their ratio, and Tune's per-trial scheduling
overhead: (wall of (a) - ideal wall - searcher compute) / trials, with ideal = trials x sleep /
concurrency and searcher compute = time inside ``suggest``/``on_trial_complete`` (GP fits,
which block Tune's loop). Ray start-up and a warm-up study that starts Ray's worker processes
are excluded (timed separately).

    python benchmarks/search.py [--n-calls 12] [--n-initial 5] [--sleep 0.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import warnings

import numpy as np

from raybench.search import GPSearcher

BRANIN_MIN = 0.397887
SPACE = {"x1": {"uniform": [-5.0, 10.0]}, "x2": {"uniform": [0.0, 15.0]}}
SEEDS = (0, 1, 2)


def branin(x1: float, x2: float) -> float:
    """The Branin-Hoo function on [-5, 10] x [0, 15]."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def noisy_branin(x1: float, x2: float, seed: int, noise: float) -> float:
    """``branin + N(0, noise)``; the RNG is seeded by the seed and the point's bits."""
    bits = np.frombuffer(np.array([x1, x2], dtype=np.float64).tobytes(), dtype=np.uint32)
    rng = np.random.default_rng([seed, *bits.tolist()])
    return branin(x1, x2) + float(rng.normal(0.0, noise))


class TimedGPSearcher(GPSearcher):
    """GPSearcher that accumulates the time spent in its Tune callbacks (driver compute)."""

    compute_s = 0.0

    def suggest(self, trial_id):
        start = time.perf_counter()
        try:
            return super().suggest(trial_id)
        finally:
            self.compute_s += time.perf_counter() - start

    def on_trial_complete(self, trial_id, result=None, error=False):
        start = time.perf_counter()
        try:
            return super().on_trial_complete(trial_id, result=result, error=error)
        finally:
            self.compute_s += time.perf_counter() - start


def run_tune(args, random_state: int, reuse_actors: bool, storage: str) -> dict:
    """(a): GPSearcher in Ray Tune; wall time, searcher compute, best noise-free values."""
    from ray import tune

    sleep, noise = args.sleep, args.noise

    def trainable(config):
        value = noisy_branin(config["x1"], config["x2"], config["seed"], noise)
        time.sleep(sleep)
        tune.report({"branin": value})

    searcher = TimedGPSearcher(SPACE, metric="branin", mode="min", n_calls=args.n_calls,
                               seeds=list(SEEDS), n_initial_points=args.n_initial,
                               random_state=random_state)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 2.0 / args.concurrency}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                    max_concurrent_trials=args.concurrency,
                                    reuse_actors=reuse_actors),
        run_config=tune.RunConfig(storage_path=storage, verbose=0,
                                  name=f"bench_rs{random_state}_reuse{int(reuse_actors)}"),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    assert not results.errors and len(results) == args.n_calls * len(SEEDS)
    true = [branin(h["params"]["x1"], h["params"]["x2"]) for h in searcher.history()]
    chosen = searcher.best()["params"]
    return {"wall": wall, "trials": len(results), "compute": searcher.compute_s,
            "best": min(true), "chosen": branin(chosen["x1"], chosen["x2"])}


def run_sequential(args, random_state: int) -> dict:
    """(b): CareBench's loop, gp_minimize calling a 3-seed sequential objective."""
    from skopt import gp_minimize

    def objective(x):
        values = []
        for seed in SEEDS:
            values.append(noisy_branin(x[0], x[1], seed, args.noise))
            time.sleep(args.sleep)
        return float(np.mean(values))

    start = time.perf_counter()
    res = gp_minimize(objective, [(-5.0, 10.0), (0.0, 15.0)], n_calls=args.n_calls,
                      n_initial_points=args.n_initial, acq_func="gp_hedge",
                      random_state=random_state)
    wall = time.perf_counter() - start
    trials = len(res.x_iters) * len(SEEDS)
    return {"wall": wall, "trials": trials, "compute": wall - trials * args.sleep,
            "best": min(branin(*x) for x in res.x_iters), "chosen": branin(*res.x)}


def main() -> None:
    """Run (b) and (a) for each random state and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-calls", type=int, default=12)
    parser.add_argument("--n-initial", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reuse", action="store_true",
                        help="also run (a) with reuse_actors=False (first random state)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints nothing

    import ray

    print(f"noisy Branin (noise sd {args.noise}, global min {BRANIN_MIN}): {args.n_calls} "
          f"configurations x {len(SEEDS)} seeds ({args.n_initial} random), {args.sleep:g} s per "
          f"seed trial, {args.concurrency} concurrent trials in (a), {os.cpu_count()} CPUs")
    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="raybench-search-bench-")
    rows = []
    try:
        # warm-up: start Ray's worker processes once, as any earlier study in a session would
        warm = argparse.Namespace(**{**vars(args), "n_calls": 2, "n_initial": 2, "sleep": 0.0})
        run_tune(warm, 0, True, storage)
        ray_init = time.perf_counter() - start
        for rs in range(args.repeats):
            rows.append(("(b) gp_minimize, sequential", rs, 1, run_sequential(args, rs)))
            rows.append(("(a) GPSearcher/Tune", rs, args.concurrency,
                         run_tune(args, rs, True, storage)))
        if args.no_reuse:
            rows.append(("(a) GPSearcher/Tune, no reuse_actors", 0, args.concurrency,
                         run_tune(args, 0, False, storage)))
    finally:
        ray.shutdown()

    print(f"\n{'':38s} {'rs':>2s} {'best f':>7s} {'chosen f':>8s} {'wall s':>7s} "
          f"{'ideal s':>7s} {'search s':>8s} {'Tune ovh/trial':>14s}")
    for name, rs, conc, res in rows:
        ideal = res["trials"] * args.sleep / conc
        ovh = (res["wall"] - ideal - res["compute"]) / res["trials"]
        tune_ovh = "" if conc == 1 else f"{ovh:.3f} s"
        print(f"{name:38s} {rs:2d} {res['best']:7.3f} {res['chosen']:8.3f} {res['wall']:7.2f} "
              f"{ideal:7.2f} {res['compute']:8.2f} {tune_ovh:>14s}")
    print("best f: lowest noise-free Branin among the evaluated configurations; chosen f: "
          "noise-free Branin of the configuration with the best observed mean; search s: GP "
          "compute (gp_minimize: wall - sleeps)")

    seq = [r for n, _, _, r in rows if n.startswith("(b)")]
    par = [r for n, _, _, r in rows if n == "(a) GPSearcher/Tune"]
    med = {k: (np.median([r[k] for r in seq]), np.median([r[k] for r in par]))
           for k in ("best", "chosen", "wall")}
    print(f"\nmedian over {args.repeats} random states: best f (b) {med['best'][0]:.3f} vs (a) "
          f"{med['best'][1]:.3f}; chosen f (b) {med['chosen'][0]:.3f} vs (a) "
          f"{med['chosen'][1]:.3f}; wall (b) {med['wall'][0]:.2f} s vs (a) "
          f"{med['wall'][1]:.2f} s -> speed-up {med['wall'][0] / med['wall'][1]:.2f}x")
    ideal = par[0]["trials"] * args.sleep / args.concurrency
    total = [(r["wall"] - ideal) / r["trials"] for r in par]
    pure = [(r["wall"] - ideal - r["compute"]) / r["trials"] for r in par]
    print(f"(a) overhead per trial: {np.median(total):.3f} s ((wall - ideal) / trials), of which "
          f"Tune scheduling {np.median(pure):.3f} s and GP compute "
          f"{np.median(total) - np.median(pure):.3f} s")
    print(f"Ray start-up + worker warm-up (excluded): {ray_init:.2f} s")


if __name__ == "__main__":
    main()
