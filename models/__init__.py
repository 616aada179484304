"""fedfusion models package."""
