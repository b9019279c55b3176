"""Runners: who executes the ingest stages, not what they do.

The stages are plain functions - `ingest.stages.load_item` (fetch + decode + `Embedder.prepare`)
per item and `Embedder.embed_prepared` per batch. A runner only decides where they run, like
clip-retrieval's distributors: `local.LocalRunner` (threads in this process, the default) or
`ray.RayRunner` (a Ray Data pipeline, on this machine or a cluster). Both satisfy
`base.Runner`; runners import the stages, never the pipeline that chooses a runner.
"""
