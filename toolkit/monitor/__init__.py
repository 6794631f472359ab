"""The understanding module: signals about what the model and its data are doing."""
