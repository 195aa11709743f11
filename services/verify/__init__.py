"""The verify service: hosts the target model; prefill and batched verification sessions."""
