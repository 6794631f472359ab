"""Developer tools over the source tree (not used at run time)."""
