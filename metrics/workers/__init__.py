"""Worker scripts run by metrics/external.py inside the metric environments (envs/.venv-<name>).

They are scripts, not modules of this package: each imports only the standard library and its own
environment's packages, never ours, and talks through a request JSON and a result JSON.
"""
