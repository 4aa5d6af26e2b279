"""The contracts: pipeline, mapping and record models, SQL, and their exported JSON Schemas."""
