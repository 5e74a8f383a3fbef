"""Chunked zarr stores of precomputed negatives: generations, manifest, publish, refresh, reading.

    python cli.py build-negatives data/ml caches/ml && python cli.py cache-info caches/ml

Modules: manifest (NegativeConfig, layout, manifest), lock (writer lock, reader leases),
store (CacheStore / Generation: the read side), write (computing and writing chunks),
publish (the writer's critical section), build (build, refresh, prune), shards (sharded
builds and their publish), bench (`cli.py bench negatives`).
"""
