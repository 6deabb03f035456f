"""One module per `lungnodule-explain` verb: `register(subparsers)` and `run(args) -> int`."""
