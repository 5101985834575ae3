"""The application on top of the library: the command line, the training recipe, checkpoints, data
sets, plots, progress bars, the model zoo and device names. Nothing in the library imports it."""
