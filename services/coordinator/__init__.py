"""The coordinator: the public API; routes each request and drives its draft -> verify steps."""
