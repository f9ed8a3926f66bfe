"""Helpers of the BIDS-App (BIDS input collection, derivative bookkeeping, exit codes)."""
