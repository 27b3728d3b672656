"""Result folders: writing and reading them (folder), marker folders that resume (markers), checkpoints.

The contract every folder follows is documented in docs/result-folders.md.
"""
