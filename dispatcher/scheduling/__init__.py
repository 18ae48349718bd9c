"""Calendar helpers for scheduling campaigns (e.g. Tết greetings on the lunar calendar)."""
