"""gateload analysis: turns run folders into decisions. Reads the results schema; never imports Locust.

Modules, one concern each:

- :mod:`gateload.analysis.schema`      the results schema (shared with the recorder) and reader helpers
- :mod:`gateload.analysis.catalogue`   the operations catalogue (shared with the load generator): roles,
                                       paced ops
- :mod:`gateload.analysis.runs`        load and validate a run folder, a label folder of replicates, a
                                       results folder
- :mod:`gateload.analysis.samples`     a run's data model: samples as numpy arrays, steps (what the analysis
                                       reads)
- :mod:`gateload.analysis.steady`      warm-up cut per load step: the ramp from the schedule, then MSER-5
- :mod:`gateload.analysis.stats`       log-bucketed histograms, circular block bootstrap, Student-t intervals,
                              replicate pooling and ratios
- :mod:`gateload.analysis.metrics`     per run and step: throughput, percentiles, errors, servers, paced ops
- :mod:`gateload.analysis.health`      coordinated omission, paced-rate shortfall, Little's law
- :mod:`gateload.analysis.usl`         Universal Scalability Law fit (and ``gateload usl``)
- :mod:`gateload.analysis.capacity`    knee and USL fit of a step run
- :mod:`gateload.analysis.acceptance`  acceptance files (TOML), strictly typed
- :mod:`gateload.analysis.faults`      fault windows: where a server's errors or latency depart from its step
- :mod:`gateload.analysis.verdict`     the verdict model (criteria, PASS/FAIL/INCONCLUSIVE) and how verdicts
                                       combine
- :mod:`gateload.analysis.estimates`   per-run composite estimates: peaks, error rates, server shares, change
                                       labels
- :mod:`gateload.analysis.criteria`    an acceptance file's criteria evaluated on analysed runs (compare,
                                       check)
- :mod:`gateload.analysis.tables`      a verdict's JSON-ready metric tables (operations, servers, steps,
                                       health)
- :mod:`gateload.analysis.compare`     the entry points: before/after comparison, single-run checks, reports
- :mod:`gateload.analysis.report`      report.html, summary.md, junit.xml, verdict.json (figures:
                                       gateload.analysis.plots)
- :mod:`gateload.analysis.cli`         ``gateload usl | compare | check | report``
- :mod:`gateload.analysis.synthetic`   synthetic runs with known truth (tests, benchmark)

From Python (the campaign)::

    from gateload.analysis.compare import compare_runs, check_runs
    verdict = compare_runs(before_dirs, after_dirs, "targets/acceptance/reference.toml", out_dir)
    verdict.verdict, verdict.exit_code, verdict.to_dict()

Bad input raises :class:`gateload.errors.InputError` with a one-line message.
"""
