"""The shared training core every recipe uses: the runtime, the step, ``fit`` and the
training contract it asks of loss modules, checkpoints of a run and its folder, metrics."""
