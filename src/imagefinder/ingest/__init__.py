"""The ingest stage: sources -> items -> (download) -> decoded, preprocessed model inputs.

sources.py expands what a user points at into items; download.py fetches URL items into a
cache; decode.py turns any image file into an upright RGB image and model input; stages.py is
the per-item function every runner executes; journal.py remembers finished items so an
interrupted build resumes. Nothing here knows which runner executes it or how an index is built.
"""
