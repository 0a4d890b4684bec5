"""minissd: SSD (Liu et al., ECCV 2016) from scratch, with hand-written backward passes.

Start with docs/README.md for the walkthroughs, and docs/ARCHITECTURE.md for the map of the code.
"""
__version__ = "0.1.0"
