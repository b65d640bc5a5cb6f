"""Batch scoring: a dataset scored by a built bento's model, its predictions appended to a database table."""
