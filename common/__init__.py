"""What every layer uses: domain errors, atomic file helpers, integrity digests, file locks.
Imports nothing else of this project."""
