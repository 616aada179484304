"""fedfusion client package."""
