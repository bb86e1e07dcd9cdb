"""A PostgreSQL pool as an APP resource and a transaction per message as a REQUEST resource.

``python -m examples.db_pool`` runs the demo (on a throwaway PostgreSQL unless
``DB_POOL_DSN`` names one); ``app`` (in ``examples.db_pool.app``) is the service.
"""
