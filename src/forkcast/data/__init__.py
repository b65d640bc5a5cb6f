"""The data: its declaration, validation, preparation and arrival."""
