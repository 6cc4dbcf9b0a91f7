"""Model families: their modules, presets, the registry that names them, and the key maps
between our weight names and other layouts (``convert/``). No file or network I/O: reading and
writing checkpoints is ``scratchlm.checkpoints``."""
