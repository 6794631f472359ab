"""The bottom floor: small utilities every other package may use; they import nothing of ours but errors."""
