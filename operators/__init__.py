"""Arrow RecordBatch operators and the registry for user operator modules."""
