"""Benchmarks: the cost of one cycle as a run grows, and throughput with N workers.

Every figure of ours is measured beside Optuna's ``JournalFileBackend`` in the
same run and quoted as a ratio, so that results from a noisy machine still mean
something. One *cycle* is what a worker does per trial:

- ours: ``lock_and_sample_trial(random_search, claim=True)`` (sampled and marked
  evaluating in one commit, as Optuna's ``ask`` creates a running trial),
  ``set_complete``, ``lock_and_report_trial_evaluation``;
- Optuna: ``study.ask(space)`` (the same three-parameter space, so both sample
  and store a config; ``optuna_params=False`` asks without one) and ``study.tell``,
  with ``RandomSampler`` (the default TPE sampler costs O(trials) per ask; we
  measure storage, not samplers).

Runs are grown to the measured sizes by a bulk prefill of finished trials (ours:
``TrialRepo.store_new_trial`` in batches; Optuna: the journal records of
``add_trials`` built in memory and appended in batches), then measured with real
cycles. Optuna has no durability setting: its file backend fsyncs every append.
"""

from pytest_neps.bench._cli import add_bench_arguments, main_bench
from pytest_neps.bench._common import optuna_version
from pytest_neps.bench._cost import cycle_cost
from pytest_neps.bench._report import plot, render_report
from pytest_neps.bench._run import machine_info, run_bench
from pytest_neps.bench._throughput import throughput

__all__ = [
    "add_bench_arguments",
    "cycle_cost",
    "machine_info",
    "main_bench",
    "optuna_version",
    "plot",
    "render_report",
    "run_bench",
    "throughput",
]
