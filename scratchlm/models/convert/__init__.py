"""Key and layout maps between our models and published checkpoint formats."""
