"""fedfusion simulation package."""
