"""The batch path: cached negative chunks in, training batches out (host or device assembly),
and the counter-hashed hybrid draws that travel with them. Imports only the top of clcrec/,
common/ and pipeline/."""
