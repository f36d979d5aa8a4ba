import dagster as dg

sessions = dg.DynamicPartitionsDefinition(name="sessions")
