"""A run and what runs it: the stage table (`steps`), the run folder's paths (`layout`), its lock, stage folders
and lineage (`runs`), atomic writes, processes, precision, the training loops' callback, the user's errors, and the
pipeline that fills a run folder (`pipeline`, `rounds`)."""
