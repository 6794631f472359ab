"""The dream loop: the model imagines scenarios, answers them, and learns from the answers that fail."""
