"""`adaspec bench`: the serving benchmark, following `vllm bench serve`'s conventions so that numbers compare.

Requests go through a `Backend` (the SDK for `adaspec`) at each request rate, with each policy, over rounds
interleaved against noise; per-request timings become vLLM's metrics plus SLO attainment, goodput, mean k and
acceptance. No torch here: the client side stays light. The parts, in the order they act:

    config -> workload (arrivals, datasets, slo) -> plan -> runner (backend, measure) -> metrics -> report, plot

`runner.run_bench(BenchConfig(...), "host:port")` returns the results; `report.write_results` writes them.
Nothing is imported here, so that building the CLI's parser does not load matplotlib or the SDK's channel code.
"""
