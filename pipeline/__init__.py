"""Offline stages: ingest real data, split warm/cold items, build features, synthesise data,
sample negatives. Everything here reads raw files or a dataset directory and writes a dataset
directory or arrays; nothing here imports torch."""
