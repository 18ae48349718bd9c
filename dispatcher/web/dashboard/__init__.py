"""The staff dashboard under ``/ui``: server-rendered Vietnamese pages over the same services
as the HTTP API, with the API key held in an HttpOnly cookie."""
