"""Data: the wsolevaluation metadata format (`metadata`), deterministic samplers (`sampler`), the OpenCV
and DALI loaders (`loaders`, `dali`), the built-in dataset (`builtin`), and what a run gets from all of
them (`pipeline.prepare_data`). `python -m wsol_fast.data` checks a dataset or generates the built-in one.
Submodules are imported where used: nothing heavy is imported here."""
