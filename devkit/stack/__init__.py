"""The local stack as real processes: ``parley dev`` and ``parley demo``. Not product code."""
