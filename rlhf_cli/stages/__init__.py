"""One module per stage, each with `run(recipe, run_dir, *, resume, overwrite) -> metrics`."""
