"""Item content featurizers fitted at ingest and reapplied to new items (issue 29).

    python cli.py ingest table ratings.csv data/mine --items items.csv --text title --categories genres:'|'

text.py        the tokenizer, LDA-C bag-of-words files, tf-idf + SVD fitted once, transformed from stored arrays
items_table.py reading an item table (.csv / .tsv / .parquet): its id column and the named content columns
featurizer.py  the roles (text, bag of words, categories, numeric) fitted together, saved as .npy + JSON
"""
