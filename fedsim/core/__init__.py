"""The ground floor every other layer stands on; it imports nothing of fedsim's but the errors.

    state    model state as a dict of tensors, and its helpers (clone, weighted mean, bytes, finiteness)
    hooks    the types the engine and the algorithms exchange (Phase, ClientJob, ClientResult, ServerState,
             ClientStore, ModelKeys)
    rng      generators keyed by (purpose, seed, round, client)
    params   how an algorithm declares its options once (name, default, help, range)

torch and numpy load inside the functions that use them, so reading the algorithms' declarations (the CLI's
--help) stays fast.
"""
