"""The text floor: what every component does with text and token ids, in one place. Prompt encoding with the
one BOS rule and chat templates live in `toolkit.chat` (on this floor too); here: padding rows into tensors,
batched generation, repetition statistics. Nothing here imports a component above it."""
