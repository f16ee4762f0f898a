"""The bare baseline: a minimal Django project that does what a submit must do at the least.

One authenticated write (bearer token looked up by its sha256) that INSERTs a row and appends
one audit row chained to the previous one's hash under an advisory lock, served by the same
uvicorn, through the same psycopg pool, on the same PostgreSQL server, in a database of its own.
No apps, no middleware, no ORM models: whatever the product costs beyond this is the product's.
"""
