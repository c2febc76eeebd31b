"""Mutation testing of the algorithm functions of every algorithm script (`make mutate`).

mutmut (configured in pyproject.toml) copies the scripts into ./mutants/, makes small changes
to one function at a time (a `+` for a `-`, `1` for `0`, a dropped argument, ...) and runs the
fast unit tests that call that function; a mutant is killed when a test fails. This script
picks the functions (the algorithm, not argument checks or logging), runs mutmut over them and
prints the score per function and the survivors, which docs/testing.md ("Mutation testing") accounts for.

    .venv/bin/python scripts/mutate.py              # every algorithm script
    .venv/bin/python scripts/mutate.py --jobs 2     # mutants tested in parallel
    .venv/bin/mutmut show NAME                      # the diff of one mutant

mutmut keeps its results in ./mutants/ and re-tests only what changed; delete the folder for a
clean run.
"""

import argparse
import collections
import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from eval_scenarios import algorithm_scripts  # noqa: E402 (the one list of algorithm scripts)

# The algorithm of each script, as mutmut names functions ("x_" + name, methods "xǁClassǁname").
FUNCTIONS = [
    "x_compute_gae",
    "x_rollout_values",
    "x_ppo_loss",
    "xǁActorǁget_states",
    "xǁActorǁget_action",
    "xǁCriticǁget_value",
    "xǁValueNormǁupdate",
    "xǁValueNormǁnormalize",
    "xǁValueNormǁdenormalize",
    # mixed play and distillation (BiDist)
    "x_sample_mask",
    "x_mixed_action",
    "x_kl_divergence",
    "x_forward_distillation_loss",
    "x_reverse_distillation_loss",
    "x_scheduled_phase",
    "x_unroll_phi",
    "x_distill",
    "x_mutual_information",
    "x_input_dependence_share",
    "x_restart_from",
    # the pool of past selves (FSP)
    "x_pool_probabilities",
    "x_snapshot_of",
    "x_pool_action",
    # the ranked policy memory (RPM)
    "x_memory_mask",
    "x_rpm_key",
    "x_sample_memory",
    "x_memory_snapshots",
    "x_memory_action",
    # network randomisation (RandNet)
    "x_random_convolution_weight",
    "x_randomize",
    "xǁActorǁfeatures",
    "x_feature_matching_loss",
    # options as responses (OPRE)
    "x_mixture_logp",
    "xǁOptionsPolicyǁoption_logp",
    "xǁOptionsPolicyǁforward",
    "xǁPosteriorǁget_logits",
    "x_options_kl",
    "x_options_losses",
    "x_usage_entropy",
]
DETECTED = {"killed", "timeout"}


def results():
    """{mutant name: status} of every mutant mutmut has generated."""
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "mutmut"), "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.strip().split(": ", 1) for line in out.splitlines() if ": " in line)


def function_of(mutant):
    return mutant.split("__mutmut_")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested in parallel (default 1)")
    parser.add_argument("--report-only", action="store_true", help="print the last run's score, run nothing")
    args = parser.parse_args()
    os.chdir(ROOT)
    with open("pyproject.toml", "rb") as f:
        source_paths = tomllib.load(f)["tool"]["mutmut"]["source_paths"]
    scripts = algorithm_scripts()
    missing = [f"{s}.py" for s in scripts if f"{s}.py" not in source_paths]
    if missing:
        sys.exit(f"error: pyproject.toml [tool.mutmut] source_paths lacks {', '.join(missing)}: add it")
    in_scope = sorted(f"{script}.{function}" for script in scripts for function in FUNCTIONS)
    if not args.report_only:
        from mutmut.__main__ import cli

        try:
            cli(["run", "--max-children", str(args.jobs), *(f"{f}__mutmut_*" for f in in_scope)], standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise
    status = {m: s for m, s in results().items() if function_of(m) in in_scope}
    if not status:
        sys.exit("error: no mutants in scope; run without --report-only first")
    per_function = collections.defaultdict(collections.Counter)
    for mutant, s in status.items():
        per_function[function_of(mutant)][s] += 1
    print(f"\n{'function':<46} {'mutants':>7} {'killed':>7} {'survived':>8} {'other':>6}")
    for function in sorted(per_function):
        c = per_function[function]
        detected = sum(c[s] for s in DETECTED)
        print(
            f"{function:<46} {sum(c.values()):>7} {detected:>7} {c['survived']:>8} "
            f"{sum(c.values()) - detected - c['survived']:>6}"
        )
    total = len(status)
    detected = sum(s in DETECTED for s in status.values())
    print(f"\n{detected} of {total} mutants killed ({100 * detected / total:.1f}%); timeouts count as killed")
    survivors = sorted(m for m, s in status.items() if s not in DETECTED)
    if survivors:
        print("not killed (`.venv/bin/mutmut show NAME` for the diff):")
        for m in survivors:
            print(f"  {m}: {status[m]}")


if __name__ == "__main__":
    main()
