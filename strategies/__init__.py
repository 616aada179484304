"""fedfusion strategies package."""
