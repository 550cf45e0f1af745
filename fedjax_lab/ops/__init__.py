"""Pure, jit- and vmap-safe functions over pytrees (no state, no I/O)."""
