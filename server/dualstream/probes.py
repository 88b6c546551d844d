"""The admin listener's paths, as probes and scrapers are configured with them.

A module of their own so that ``dualstream health`` and the manifest checks can use them
without loading the sidecar.
"""

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"
