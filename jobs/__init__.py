"""The job contract and state shared by the API and the workers (no Flask, no torch)."""
