"""The embedded engine: statemachine.asl.json on moto's Step Functions interpreter, with each
Lambda invoke served by the real handlers in a pool of worker processes."""
