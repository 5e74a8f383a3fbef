"""Exact full-ranking evaluation (all / warm / cold), top-k, baselines and the report table.
Imports only the top of clcrec/, common/ and pipeline/."""
