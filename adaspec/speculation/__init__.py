"""Speculation decisions, pure: no torch, no gRPC, no I/O; plain data in, plain data out.

  latency_profile  t_v and t_d as functions of a forward's shape, fitted to measurements, refined online
  acceptance       calibrated acceptance of a draft token from its confidence; per-request adjustment
  step_state       what a policy decides from: each request's state, the step's load and models
  efficiency       expected tokens, step time, goodput, and the per-request plan that maximises it
  draft_budget     what a policy hands the drafter, and the token-by-token stop rule it applies
  policies/        every rule, one file each (`make_policy`)
  routing          which verify replica can meet a request's SLO with the most slack

The engine, the coordinator and the simulator import these unchanged.
"""
