"""The embedded engine: statemachine.asl.json run on :mod:`pipeline.engine.direct` (the
default), or on moto's Step Functions interpreter for a definition the direct one cannot run
(:class:`pipeline.engine.local.LocalEngine`, ``interpreter`` auto/direct/moto), each Lambda
invoke served by the real handlers, in the engine's process or a pool of worker processes."""
