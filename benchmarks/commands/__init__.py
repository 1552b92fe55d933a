"""Sub-commands of `bench`; each module has `register(subparsers)`."""
