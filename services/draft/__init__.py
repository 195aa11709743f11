"""The draft service: hosts the draft model; batched drafting sessions with per-request k."""
